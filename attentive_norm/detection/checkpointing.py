"""Training state of a detection run: saved atomically, restored exactly (weights, optimiser, position, RNG).

A checkpoint holds the model and optimiser states, the position in the schedule (completed epochs,
batches done in the current epoch, global iteration), every process's torch RNG state and the run's
configuration, so ``detect eval`` can rebuild the model from the file alone. Files are written with
:func:`attentive_norm.checkpoint.atomic_save` and read with ``safe_torch_load`` (no code runs from them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import CheckpointError, atomic_save, safe_torch_load
from ..engine.distributed import all_gather_objects

FORMAT = "attentive_norm.detection/1"


@dataclass
class TrainState:
    """Where training stands: ``epoch`` (0-based, current), ``batch`` done in it, global ``iteration``."""

    epoch: int = 0
    batch: int = 0
    iteration: int = 0


def save_training_state(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    config: dict[str, Any],
    is_main: bool,
) -> None:
    """Collective: every process contributes its RNG state; the main process writes ``path``."""
    rng_states = all_gather_objects(torch.get_rng_state())
    if not is_main:
        return
    atomic_save(
        {
            "format": FORMAT,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": state.epoch,
            "batch": state.batch,
            "iteration": state.iteration,
            "rng": rng_states,
            "config": config,
        },
        path,
    )


def read_detection_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_training_state`, checked for its format."""
    data = safe_torch_load(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a detection checkpoint of this package (expected format {FORMAT})"
        )
    return data


def restore_training_state(
    data: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, rank: int
) -> TrainState:
    """Load weights, optimiser and this process's RNG state; returns the position to continue from."""
    model.load_state_dict(data["model"])
    optimizer.load_state_dict(data["optimizer"])
    rng = data["rng"]
    torch.set_rng_state(rng[rank] if rank < len(rng) else rng[0])
    return TrainState(data["epoch"], data["batch"], data["iteration"])
