"""A run killed mid-epoch (SIGKILL, no clean-up) and resumed ends bitwise equal to an uninterrupted run."""

import os
import signal
import subprocess
import sys

import pytest
import torch

from attentive_norm.checkpoint import safe_torch_load
from attentive_norm.cli.main import main
from attentive_norm.engine.trainer import KILL_ENV

# 2 epochs of 6 steps; mixup and EMA on, so their random and running state must resume too.
ARGS = [
    "--epochs", "2", "--subset", "96", "--batch-size", "16", "--image-size", "12", "--threads", "1",
    "--deterministic", "--no-progress", "--save-every", "4", "--mixup-alpha", "0.4", "--ema-decay", "0.8",
]  # fmt: skip


def cli(*argv, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    command = [sys.executable, "-m", "attentive_norm.cli.main", *map(str, argv)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.slow
def test_killed_and_resumed_run_matches_the_uninterrupted_one(tmp_path, capsys, restore_determinism):
    # The uninterrupted reference runs in-process (same code, same single thread): one process fewer.
    assert main(["train", *ARGS, "--output", str(tmp_path), "--name", "straight"]) == 0

    killed = cli("train", *ARGS, "--output", tmp_path, "--name", "killed", env_extra={KILL_ENV: "10"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    last = safe_torch_load(tmp_path / "killed" / "checkpoint_last.pt")
    assert (last["epoch"], last["batch"], last["step"]) == (1, 2, 8)  # saved mid-epoch, after step 8

    resumed = cli("train", "--resume", tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "epoch 2, batch 2" in resumed.stdout

    a = safe_torch_load(tmp_path / "straight" / "checkpoint_last.pt")
    b = safe_torch_load(tmp_path / "killed" / "checkpoint_last.pt")
    assert (a["step"], b["step"]) == (12, 12)
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    momentum = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    assert all(
        torch.equal(x, s["momentum_buffer"]) for x, s in zip(momentum, b["optimizer"]["state"].values())
    )
    keys = ("train_loss", "val_loss", "val_top1", "ema_top1")
    assert [{k: r[k] for k in keys} for r in a["history"]] == [{k: r[k] for k in keys} for r in b["history"]]
