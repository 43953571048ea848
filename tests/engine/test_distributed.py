"""DDP: a 2-process gloo job on CPU reaches the weights of one process with the same global batch.

The model has only AN layers as norms: they synchronise their batch statistics across processes on
any backend, while PyTorch's SyncBatchNorm (for plain BatchNorm) refuses CPU tensors.
"""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from attentive_norm.checkpoint import safe_torch_load
from attentive_norm.cli.main import main
from attentive_norm.layers import AttentiveBatchNorm2d
from attentive_norm.models import registry

MODEL = """
from torch import nn
from attentive_norm.layers import AttentiveBatchNorm2d


def tiny_an(num_classes=10, **kwargs):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), AttentiveBatchNorm2d(8, 4), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), AttentiveBatchNorm2d(16, 4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )
"""

LAUNCHER = """
import sys
from attentive_norm.cli.main import main
from attentive_norm.models import register_model
from tiny_model import tiny_an

register_model(tiny_an)
sys.exit(main(sys.argv[1:]))
"""

ARGS = [
    "train", "--model", "tiny_an", "--epochs", "2", "--subset", "96", "--batch-size", "16",
    "--image-size", "12", "--threads", "1", "--no-progress", "--lr", "0.4",
]  # fmt: skip


@pytest.fixture
def tiny_model(tmp_path):
    (tmp_path / "tiny_model.py").write_text(MODEL)
    (tmp_path / "launch.py").write_text(LAUNCHER)
    sys.path.insert(0, str(tmp_path))
    from tiny_model import tiny_an

    registry.register_model(tiny_an)
    yield tmp_path
    registry._MODEL_ENTRYPOINTS.pop("tiny_an")
    sys.path.remove(str(tmp_path))
    sys.modules.pop("tiny_model")


def test_the_tiny_model_has_no_plain_batch_norm(tiny_model):
    model = registry.create_model("tiny_an")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(isinstance(m, AttentiveBatchNorm2d) for m in model.modules()) == 2


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tiny_model, capsys):
    folder = tiny_model
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(folder), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    argv = [*ARGS, "--output", str(folder), "--name", "ddp"]
    job = subprocess.run(
        [*command, str(folder / "launch.py"), *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert job.returncode == 0, job.stderr[-3000:]
    assert (
        "2 process(es) on cpu" in job.stdout
        and "8 images per process" in (folder / "ddp" / "config.yaml").read_text()
    )

    assert main([*ARGS, "--output", str(folder), "--name", "single"]) == 0
    ddp = safe_torch_load(folder / "ddp" / "checkpoint_last.pt")
    single = safe_torch_load(folder / "single" / "checkpoint_last.pt")
    assert ddp["step"] == single["step"] == 12 and ddp["world_size"] == 2
    for key, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    for a, b in zip(ddp["history"], single["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_top1"] == pytest.approx(b["val_top1"], abs=1e-9)
