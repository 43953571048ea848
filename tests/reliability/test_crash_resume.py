"""A run killed with SIGKILL (no clean-up) during evaluation, during a checkpoint write and during a step,
and each time resumed (``--resume`` or ``--auto-resume``), ends bitwise equal to an uninterrupted run."""

import os
import signal
import subprocess
import sys

import pytest
import torch

from attentive_norm.checkpoint import safe_torch_load
from attentive_norm.cli.main import main
from attentive_norm.engine.faults import FAULT_ENV
from attentive_norm.engine.state import LAST

# 2 epochs of 6 steps, checkpoints after steps 4, 6 (epoch end), 8 and 12; mixup and EMA on, so their
# random and running state must resume too.
ARGS = [
    "--epochs", "2", "--subset", "96", "--batch-size", "16", "--image-size", "12", "--threads", "1",
    "--deterministic", "--no-progress", "--save-every", "4", "--mixup-alpha", "0.4", "--ema-decay", "0.8",
]  # fmt: skip

KILLS = [  # each attempt is killed at the next point; the (epoch, batch, step) of the checkpoint it leaves
    ("kill:eval:1", (0, 4, 4)),  # during the evaluation after epoch 1: the checkpoint after step 4
    ("kill:save:8", (1, 0, 6)),  # while writing the checkpoint after step 8: the one ending epoch 1
    ("kill:step:10", (1, 2, 8)),  # during step 10: the checkpoint after step 8
]


def cli(*argv, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    command = [sys.executable, "-m", "attentive_norm.cli.main", *map(str, argv)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The last checkpoint of the uninterrupted run (in-process: same code, one process fewer)."""
    folder = tmp_path_factory.mktemp("straight")
    try:
        assert main(["train", *ARGS, "--output", str(folder), "--name", "straight"]) == 0
    finally:
        torch.use_deterministic_algorithms(False)
    return safe_torch_load(folder / "straight" / LAST)


@pytest.mark.slow
def test_a_run_killed_at_three_points_resumes_to_the_uninterrupted_weights(tmp_path, straight):
    run = tmp_path / "killed"
    fresh = ["train", *ARGS, "--output", tmp_path, "--name", "killed"]
    # the first attempt starts; the next ones continue with --resume or by themselves (--auto-resume)
    attempts = [fresh, ["train", "--resume", run], [*fresh, "--auto-resume"], [*fresh, "--auto-resume"]]
    resuming, partial = None, []
    for argv, (fault, (epoch, batch, step)) in zip(attempts, KILLS):
        killed = cli(*argv, env_extra={FAULT_ENV: fault})
        assert killed.returncode == -signal.SIGKILL, (fault, killed.stderr)
        assert resuming is None or resuming in killed.stdout, fault
        assert ("removed 1 partial checkpoint file" in killed.stdout) == bool(partial), fault
        last = safe_torch_load(run / LAST)  # the previous checkpoint is whole
        assert (last["epoch"], last["batch"], last["step"]) == (epoch, batch, step), fault
        partial = list(run.glob(f".{LAST}.*.tmp"))  # the write the kill interrupted
        assert len(partial) == fault.startswith("kill:save"), fault
        resuming = f"resuming {run} at epoch {epoch + 1}, batch {batch} (step {step})"

    resumed = cli(*attempts[-1])
    assert resumed.returncode == 0, resumed.stderr
    assert resuming in resumed.stdout and not list(run.glob("*.tmp"))

    a, b = straight, safe_torch_load(run / LAST)
    assert (a["step"], b["step"]) == (12, 12)
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    momentum = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    assert all(
        torch.equal(x, s["momentum_buffer"]) for x, s in zip(momentum, b["optimizer"]["state"].values())
    )
    keys = ("train_loss", "val_loss", "val_top1", "ema_top1", "skipped_steps")
    assert [{k: r[k] for k in keys} for r in a["history"]] == [{k: r[k] for k in keys} for r in b["history"]]
