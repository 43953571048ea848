"""Faults in a 2-process gloo job on CPU under torchrun: a worker killed with SIGKILL makes torchrun
restart the job, which continues from the last checkpoint to the weights of an uninterrupted job; a
process whose whole batch is unreadable skips the step together with the others instead of leaving
them waiting forever.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attentive_norm.checkpoint import safe_torch_load
from attentive_norm.engine import distributed
from attentive_norm.engine.faults import FAULT_ENV
from attentive_norm.engine.state import LAST

# 2 epochs of 4 steps (8 images per process), checkpoints after steps 3, 4 (epoch end), 6 and 8.
ARGS = [
    "--epochs", "2", "--subset", "64", "--batch-size", "16", "--image-size", "12", "--threads", "1",
    "--deterministic", "--no-progress", "--save-every", "3",
]  # fmt: skip


def torchrun(*argv: object, max_restarts: int = 0, fault: str | None = None) -> subprocess.CompletedProcess:
    """A 2-process ``attentive-norm train`` job; on a time-out every process of it is killed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop(FAULT_ENV, None)
    if fault is not None:
        env[FAULT_ENV] = fault
    # A fresh store per attempt: restarts sharing torchrun's store may hang (pytorch/pytorch#135712).
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["--max-restarts", str(max_restarts), "-m", "attentive_norm.cli.main", "train"]
    command += list(map(str, argv))
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    with subprocess.Popen(command, env=env, start_new_session=True, **pipes) as job:
        try:
            out, err = job.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)  # the workers too, not only torchrun
            raise
    return subprocess.CompletedProcess(command, job.returncode, out, err)


@pytest.mark.slow
def test_a_killed_worker_is_restarted_by_torchrun_and_the_job_ends_as_if_uninterrupted(tmp_path):
    straight = torchrun(*ARGS, "--output", tmp_path, "--name", "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]

    # rank 1 dies during step 7; torchrun stops rank 0 and starts both again, which continue by themselves
    job = torchrun(*ARGS, "--output", tmp_path, "--name", "restarted", max_restarts=1, fault="kill:step:7@1")
    assert job.returncode == 0, job.stderr[-3000:]
    assert f"resuming {tmp_path / 'restarted'} at epoch 2, batch 2 (step 6)" in job.stdout
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in job.stdout

    a = safe_torch_load(tmp_path / "straight" / LAST)
    b = safe_torch_load(tmp_path / "restarted" / LAST)
    assert (a["step"], b["step"], b["world_size"]) == (8, 8, 2)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    keys = ("train_loss", "val_loss", "val_top1")
    assert [{k: r[k] for k in keys} for r in a["history"]] == [{k: r[k] for k in keys} for r in b["history"]]


def image_folder(root: Path) -> Path:
    """10 training images (one of them a JPEG cut in half, which fails only when decoded), 4 validation."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 5), ("val", 2)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            plain = count - 1 if (split, c) == ("train", "b") else count  # room for the broken one
            for i in range(plain):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).save(
                    root / split / c / f"{i}.png"
                )
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(buffer, "JPEG")
    cut = buffer.getvalue()[: len(buffer.getvalue()) // 2]  # PIL's verify() passes it, decoding fails
    (root / "train" / "b" / "cut.jpg").write_bytes(cut)
    return root


@pytest.mark.slow
def test_a_process_without_readable_images_skips_the_step_with_the_others(tmp_path):
    data = image_folder(tmp_path / "data")
    # one image per process and step: the step that draws the broken image has none on one process
    argv = ["--data", data, "--epochs", "1", "--batch-size", "2", "--image-size", "12", "--workers", "0"]
    job = torchrun(*argv, "--threads", "1", "--no-progress", "--output", tmp_path, "--name", "run")
    assert job.returncode == 0, job.stderr[-3000:]
    assert "skipped: every image of a process's batch failed to load" in job.stdout
    rows = list(csv.DictReader((tmp_path / "run" / "summary.csv").read_text().splitlines()))
    assert (int(rows[0]["skipped"]), int(rows[0]["skipped_steps"])) == (1, 1)


def test_restarts_through_a_shared_store_are_flagged(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")  # torchrun's default
    assert distributed.restarts_share_the_store()
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
    assert not distributed.restarts_share_the_store()
