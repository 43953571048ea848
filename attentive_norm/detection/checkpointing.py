"""Training state of a detection run: saved atomically, restored exactly (weights, optimiser, position, RNG).

A checkpoint holds the model and optimiser states, the position in the schedule (completed epochs,
batches done in the current epoch, global iteration), every process's torch RNG state, the run's
configuration and the categories trained on (ids and names in label order), so ``detect eval`` can
rebuild the model from the file alone and refuse data of other categories. Files are written with
:func:`attentive_norm.checkpoint.atomic_save` and read with ``safe_torch_load`` (no code runs from them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import CheckpointError, atomic_save, safe_torch_load
from ..checkpoint.keys import compare_keys
from ..data.folder import DataError
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
    categories: list[dict[str, Any]],
    is_main: bool,
) -> None:
    """Collective: every process contributes its RNG state; the main process writes ``path``.
    ``categories``: ``{"id", "name"}`` per label, label 1 first."""
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
            "categories": categories,
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


def check_categories(
    data: dict[str, Any], path: str | Path, categories: list[dict[str, Any]], source: str | Path
) -> None:
    """Raise :class:`DataError` naming the first difference if the data's categories (``{"id", "name"}``
    in label order) are not those checkpoint ``path`` was trained on. Checkpoints written before the
    categories were recorded are checked by their number, read from the class-score layer."""
    saved = data.get("categories")
    if saved is None:
        counts = [v.shape[0] - 1 for k, v in data["model"].items() if k.endswith("cls_score.weight")]
        if counts and counts[0] != len(categories):
            raise DataError(
                f"{source} has {len(categories)} categories, but {path} was trained on {counts[0]}"
            )
        return
    if saved == categories:
        return
    for label, (old, new) in enumerate(zip(saved, categories), start=1):
        if old != new:
            difference = f"label {label} is {_category(old)} in the checkpoint, {_category(new)} in the data"
            break
    else:
        difference = f"{len(saved)} categories in the checkpoint, {len(categories)} in the data"
    raise DataError(f"{source}: categories differ from those {path} was trained on: {difference}")


def _category(category: dict[str, Any]) -> str:
    return f"id {category['id']} {category['name']!r}"


def load_model_state(
    model: nn.Module, data: dict[str, Any], path: str | Path, model_settings: dict[str, Any]
) -> None:
    """Load the checkpoint's weights into ``model`` (built from ``model_settings``, a ``ModelConfig`` as a
    dict); weights that do not fit are a :class:`CheckpointError` naming the model settings that differ
    from the checkpoint's and the first weights that do not fit."""
    state = data["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        saved = data.get("config", {}).get("model", {})
        settings = [
            f"model.{key} {saved[key]!r} in the checkpoint, {value!r} now"
            for key, value in model_settings.items()
            if key in saved and saved[key] != value
        ]
        own = model.state_dict()
        missing, unexpected, wrong_shape = compare_keys(state, own)
        sizes = [
            f"{k} {list(state[k].shape)} in the checkpoint, {list(own[k].shape)} now" for k in wrong_shape
        ]
        weights = [
            *([f"{len(missing)} weights missing (first {missing[0]})"] if missing else []),
            *([f"{len(unexpected)} unexpected (first {unexpected[0]})"] if unexpected else []),
            *([f"{len(sizes)} of another size (first {sizes[0]})"] if sizes else []),
        ]
        differ = f"; settings that differ: {', '.join(settings)}" if settings else ""
        raise CheckpointError(
            f"{path} does not fit the model these settings build: "
            f"{', '.join(weights) or str(e).splitlines()[0]}{differ}"
        ) from e


def restore_training_state(
    data: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rank: int,
    path: str | Path,
    model_settings: dict[str, Any],
) -> TrainState:
    """Load weights (see :func:`load_model_state`), optimiser and this process's RNG state; returns the
    position to continue from."""
    load_model_state(model, data, path, model_settings)
    optimizer.load_state_dict(data["optimizer"])
    rng = data["rng"]
    torch.set_rng_state(rng[rank] if rank < len(rng) else rng[0])
    return TrainState(data["epoch"], data["batch"], data["iteration"])
