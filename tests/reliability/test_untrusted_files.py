"""No checkpoint load runs code: the code base reaches pickle only through the weights-only loader, and
every command and API that opens a checkpoint refuses a crafted pickle before its code runs.
(The loader itself, the authors' format and the apex allow-list: tests/checkpoint/test_security.py;
truncated and bit-flipped files: tests/checkpoint/test_safe_load.py, test_weights_file.py and
tests/reliability/test_checkpoint_fuzzing.py.)
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

import attentive_norm
from attentive_norm.checkpoint import UnsafeCheckpointError
from attentive_norm.checkpoint.testing import RunsPython, RunsShell
from attentive_norm.cli.main import main
from attentive_norm.models import create_model

PACKAGE = Path(attentive_norm.__file__).parent
UNSAFE = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle", "dill", "cloudpickle", "joblib.load",
    "marshal.load", "marshal.loads", "shelve.open", "pandas.read_pickle", "numpy.load",
    "torch.load", "torch.serialization.load", "torch.jit.load", "torch.package",
    "torch.hub.load", "torch.hub.load_state_dict_from_url", "torch.utils.model_zoo.load_url",
    "torch.serialization.add_safe_globals", "yaml.load", "yaml.unsafe_load", "yaml.full_load",
}  # fmt: skip
"""Names that unpickle (or widen what the weights-only unpickler accepts) or run YAML tags."""
THE_SAFE_LOADER = ("checkpoint/safe_load.py", "torch.load")


def unsafe_uses(source: str) -> list[tuple[str, ast.AST]]:
    """``(dotted name, node)`` for every reference to a name of :data:`UNSAFE` in ``source``."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:  # "import a.b" binds a; "import a.b as c" binds c to a.b
                top = alias.name.split(".")[0]
                aliases[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found = []
    for node in ast.walk(tree):
        parts: list[str] = []
        base = node
        while isinstance(base, ast.Attribute):
            parts.insert(0, base.attr)
            base = base.value
        if not isinstance(base, ast.Name) or base.id not in aliases:
            continue
        dotted = ".".join([aliases[base.id], *parts])
        if any(dotted == name or dotted.startswith(f"{name}.") for name in UNSAFE):
            found.append((dotted, node))
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load('x.pt')",
        "import torch as t\nf = t.load",
        "from torch import load\nload('x.pt')",
        "import torch.serialization\ntorch.serialization.load('x')",
        "import pickle\npickle.loads(b'')",
        "from pickle import Unpickler as U\nU(f).load()",
        "import numpy as np\nnp.load('x.npy', allow_pickle=True)",
        "import yaml\nyaml.load(text, Loader=yaml.Loader)",
        "import torch\ntorch.hub.load_state_dict_from_url('https://x')",
    ],
)
def test_the_scan_finds_unpickling_calls(snippet: str) -> None:
    assert unsafe_uses(snippet)


def test_only_the_weights_only_loader_reaches_pickle() -> None:
    found = {
        (str(path.relative_to(PACKAGE)), name, node)
        for path in PACKAGE.rglob("*.py")
        for name, node in unsafe_uses(path.read_text())
    }
    assert {(file, name) for file, name, _ in found} == {THE_SAFE_LOADER}
    (call,) = [
        node
        for node in ast.walk(ast.parse((PACKAGE / THE_SAFE_LOADER[0]).read_text()))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load"
    ]
    weights_only = {k.arg: ast.literal_eval(k.value) for k in call.keywords}.get("weights_only")
    assert weights_only is True


@pytest.fixture(params=["zip", "legacy"])
def crafted(request, tmp_path: Path) -> tuple[Path, Path]:
    """``(checkpoint, marker)``: a torch file whose unpickling would create ``marker``."""
    marker, path = tmp_path / "marker", tmp_path / "evil.pt"
    payload = {"model": {"w": torch.ones(2)}, "args": RunsShell(marker), "x": RunsPython(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=request.param == "zip")
    return path, marker


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--resume", "{evil}"],
        ["validate", "--checkpoint", "{evil}", "--model", "resnet20_an"],
        ["convert", "{evil}", "{tmp}/out.safetensors", "--model", "resnet20_an"],
        ["detect", "eval", "--checkpoint", "{evil}"],
    ],
    ids=["train --resume", "validate", "convert", "detect eval"],
)
def test_every_command_refuses_a_crafted_checkpoint(crafted, argv, capsys) -> None:
    path, marker = crafted
    code = main([a.format(evil=path, tmp=path.parent) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and f"{path}: refusing to load" in err and "Traceback" not in err, err
    assert not marker.exists()


def test_the_python_apis_refuse_a_crafted_checkpoint(crafted) -> None:
    path, marker = crafted
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        create_model("resnet20_an", num_classes=10, pretrained=str(path))
    import timm  # timm's own loader (checkpoint_path=...) is weights-only too

    with pytest.raises((pickle.UnpicklingError, RuntimeError), match=r"(?i)weights.only"):
        timm.create_model("resnet20_an", num_classes=10, checkpoint_path=str(path))
    assert not marker.exists()
