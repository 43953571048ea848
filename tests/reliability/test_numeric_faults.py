"""A NaN/Inf loss stops the run naming the step (the last good checkpoint kept), or, with
``--skip-nonfinite``, is skipped without a trace in the weights, statistics or optimiser; fp16 gradient
overflow is absorbed by the gradient scaler. (AN on constant, 1×1, batch-1 and extreme inputs:
tests/layers/test_edge_cases.py and tests/reliability/test_layer_fuzzing.py.)

The fault is real: the model's input becomes NaN at chosen steps, so the forward pass itself, batch
statistics included, produces the non-finite loss.
"""

from __future__ import annotations

import csv
import functools
import itertools
import math

import pytest
import torch
from torch import nn

from attentive_norm.checkpoint import safe_torch_load
from attentive_norm.cli.main import main
from attentive_norm.engine import state, trainer

# Three epochs of 2 steps, a checkpoint after every step (the last step runs at LR 0).
TINY = ["--subset", "64", "--batch-size", "32", "--image-size", "12", "--threads", "1", "--no-progress"]
ARGV = ["train", *TINY, "--epochs", "3", "--save-every", "1", "--name", "run"]


@pytest.fixture
def nan_input_at(monkeypatch):
    """``nan_input_at(steps)``: the trained model's input is NaN in those (1-based) training steps."""

    def arm(steps: set[int]) -> None:
        build_model = trainer.build_model
        calls = itertools.count(1)

        def poison(module: nn.Module, args: tuple) -> tuple | None:
            if module.training and next(calls) in steps:
                return (torch.full_like(args[0], math.nan),)
            return None

        def build(args: dict, pretrained: str | None = None) -> nn.Module:
            model = build_model(args, pretrained)
            model.register_forward_pre_hook(poison)
            return model

        monkeypatch.setattr(trainer, "build_model", build)

    return arm


@pytest.fixture
def saved_states(monkeypatch) -> dict[int, dict]:
    """The model and optimiser states of every checkpoint written, by step."""
    states: dict[int, dict] = {}
    save = state.save

    def record(snapshot: dict, path) -> None:
        states[snapshot["step"]] = {
            "model": {k: v.clone() for k, v in snapshot["model"].items()},
            "momentum": [s["momentum_buffer"].clone() for s in snapshot["optimizer"]["state"].values()],
        }
        save(snapshot, path)

    monkeypatch.setattr(state, "save", record)
    return states


def _finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


def test_a_nonfinite_loss_stops_the_run_naming_the_step(tmp_path, nan_input_at, capsys):
    nan_input_at({3})
    assert main([*ARGV, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "the training loss is not finite at step 3 (epoch 2, batch 1" in err
    assert "the last good checkpoint (step 2) is kept" in err and "--skip-nonfinite" in err
    last = safe_torch_load(tmp_path / "run" / state.LAST)
    assert last["step"] == 2 and _finite(last["model"])


def test_skipped_nonfinite_steps_leave_no_trace_and_are_counted(tmp_path, nan_input_at, saved_states, capsys):
    nan_input_at({2, 3})
    assert main([*ARGV, "--output", str(tmp_path), "--skip-nonfinite"]) == 0
    out = capsys.readouterr().out
    for step, where in ((2, "epoch 1, batch 2"), (3, "epoch 2, batch 1")):
        assert f"the training loss is not finite at step {step} ({where}; this process: nan)" in out
    # a skipped step changes nothing: not the weights, the BN/AN statistics or the momentum
    for step in (2, 3):
        before, after = saved_states[step - 1], saved_states[step]
        assert all(torch.equal(before["model"][k], v) for k, v in after["model"].items()), step
        assert all(torch.equal(a, b) for a, b in zip(before["momentum"], after["momentum"])), step
    assert not torch.equal(saved_states[4]["model"]["fc.weight"], saved_states[3]["model"]["fc.weight"])
    assert all(_finite(s["model"]) for s in saved_states.values())
    rows = list(csv.DictReader((tmp_path / "run" / "summary.csv").read_text().splitlines()))
    assert [int(r["skipped_steps"]) for r in rows] == [1, 1, 0]
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)


def test_fp16_gradient_overflow_is_skipped_by_the_scaler(tmp_path, monkeypatch, saved_states):
    # A loss scale of 2^40 overflows the fp16 gradients of step 1; the scaler skips it and backs off to 2^10.
    scaler = functools.partial(torch.amp.GradScaler, init_scale=2.0**40, backoff_factor=2.0**-30)
    monkeypatch.setattr(torch.amp, "GradScaler", scaler)
    assert main([*ARGV, "--output", str(tmp_path), "--amp", "fp16"]) == 0
    assert saved_states[1]["momentum"] == [] and saved_states[2]["momentum"]  # step 1 skipped, 2 taken
    last = safe_torch_load(tmp_path / "run" / state.LAST)
    assert last["scaler"]["scale"] == 2.0**10 and _finite(last["model"])
    assert all(r["skipped_steps"] == 0 and math.isfinite(r["train_loss"]) for r in last["history"])
