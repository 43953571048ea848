"""The training checkpoint: everything needed to continue a run exactly where it stopped.

A checkpoint is a plain dictionary of tensors, numbers and strings (loadable with
``torch.load(weights_only=True)``), written atomically:

- ``args``: the arguments that build the model (``model``: the registered name, ``num_classes``,
  ``model_kwargs``), ``model``: its state dict, ``classes``: the class names in label order;
- ``optimizer``, ``scheduler``, ``scaler``, ``ema`` (or None): their state dicts;
- ``epoch``, ``batch`` (batches done in that epoch), ``step`` (global): the position of the sampler;
- ``rng``: the random states (torch, CUDA, numpy, python) of every process, in rank order;
- ``config``, ``history`` (the per-epoch rows so far), ``meters`` (the running epoch's sums over all
  processes and its training seconds), ``best``, ``world_size``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import CheckpointError, atomic_write, safe_torch_load
from ..checkpoint.apex_stub import APEX_SAFE_GLOBALS
from . import faults

FORMAT = "attentive_norm.train"
VERSION = 1
LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"


def rng_state() -> dict[str, Any]:
    """This process's random states, as tensors and plain Python values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a training checkpoint atomically (a crash never leaves a half-written file)."""
    snapshot = {"format": FORMAT, "version": VERSION, **state}
    point = f"save:{state.get('step')}"
    atomic_write(path, lambda f: torch.save(snapshot, faults.writer(f, point)))


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file, given the file or a run folder (then its latest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    return path


def load(path: str | os.PathLike) -> dict[str, Any]:
    """A training checkpoint of this project, checked to be one (with a clear error otherwise)."""
    path = resolve(path)
    state = safe_torch_load(path, allowed_globals=APEX_SAFE_GLOBALS)  # the authors' files: named below
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a training checkpoint of attentive-norm (it cannot be resumed; to start from "
            "its weights: `attentive-norm train --pretrained FILE`, `attentive-norm validate`, or "
            "attentive_norm.load_checkpoint)"
        )
    if state["version"] > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer attentive-norm (format version {state['version']})"
        )
    return state
