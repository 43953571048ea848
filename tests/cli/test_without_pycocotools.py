"""Without the optional ``detection`` extra (pycocotools) every command works, and ``detect`` says in one
line what to install (the CLI used to crash at import, building the ``detect`` parser)."""

import json
import os
import subprocess
import sys
from pathlib import Path

DRIVER = """
import contextlib, io, json, sys
sys.modules["pycocotools"] = None  # import pycocotools now fails, as without the extra
from attentive_norm.cli.main import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    results.append({"code": code, "out": out.getvalue(), "err": err.getvalue()})
print(json.dumps(results))
"""


def test_commands_work_and_detect_asks_for_the_extra(tmp_path: Path) -> None:
    runs = [
        ["models", "resnet20_an"],
        ["train", "--help"],
        ["detect", "train", "--help"],
        ["detect", "train"],
        ["detect", "eval", "--checkpoint", "last.pth"],
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(runs)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    models, train_help, detect_help, detect_train, detect_eval = json.loads(done.stdout.splitlines()[-1])
    assert models["code"] == 0 and "resnet20_an" in models["out"]
    assert train_help["code"] == 0 and "--resume" in train_help["out"]
    assert detect_help["code"] == 0 and "--train-ann" in detect_help["out"]
    for result in (detect_train, detect_eval):
        err = result["err"]
        assert result["code"] == 2 and err.startswith("attentive-norm: error: detect needs pycocotools")
        assert err.count("\n") == 1 and 'pip install "attentive-norm[detection]"' in err
    assert not any(tmp_path.iterdir())  # nothing was started
