"""``load_checkpoint``: any supported checkpoint into a model, completely or not at all.

Steps: read the file safely (:mod:`.sources`), strip wrapper prefixes, rename the authors' AN keys,
optionally swap in apex's fp32 master weights, check every key and shape against the model, cast to
the model's dtypes, then ``load_state_dict``. A mismatch raises before the model is touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from torch import Tensor, nn

from .errors import CheckpointMismatchError
from .keys import (
    compare_keys,
    parameter_key_names,
    strip_wrapper_prefixes,
    to_model_key_names,
    unwrap_model,
)
from .masters import apply_fp32_masters
from .sources import CheckpointContents, read_checkpoint

_SHOWN = 5


@dataclass(frozen=True)
class LoadInfo:
    """What ``load_checkpoint`` loaded.

    Attributes:
        path: the file.
        source_format: ``"safetensors"``, ``"training"``, ``"official"`` or ``"state_dict"``.
        model_name: the architecture the file says it holds, if it says.
        weights: ``"fp32_master"`` (apex's fp32 masters replaced the fp16 parameters) or ``"stored"``.
        note: how the weights were chosen (e.g. why the masters were not used).
        missing_keys, unexpected_keys: left out / ignored keys (only possible with ``strict=False``).
        metadata: the safetensors metadata (empty for torch files).
    """

    path: str
    source_format: str
    model_name: str | None
    weights: str
    note: str
    missing_keys: tuple[str, ...] = ()
    unexpected_keys: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike | CheckpointContents,
    strict: bool = True,
    use_fp32_master: bool = True,
) -> LoadInfo:
    """Load ``path`` (ours: training checkpoint or safetensors; the authors'; a plain state dict) into
    ``model``, casting to the model's dtypes.

    Args:
        model: the model, or a DataParallel/DDP/``torch.compile`` wrapper of it.
        path: the file, or its contents already read with :func:`.sources.read_checkpoint`.
        strict: if set (default), every model key must be in the checkpoint and vice versa. With
            ``strict=False`` missing/unexpected keys are allowed and listed in the result; shape
            mismatches are always an error.
        use_fp32_master: for the authors' apex files, use the fp32 master weights when they match the
            fp16 parameters unambiguously (see :mod:`.masters`).

    Raises:
        CheckpointMismatchError: keys or shapes do not fit (message: the first few, and the
            architecture the file says it holds); the model is left unchanged.
        CorruptCheckpointError, UnsafeCheckpointError, CheckpointError: see :mod:`.sources`.
    """
    contents = path if isinstance(path, CheckpointContents) else read_checkpoint(path)
    model = unwrap_model(model)
    model_state = model.state_dict()
    state = strip_wrapper_prefixes(contents.state_dict, model_state)
    weights, note = "stored", "weights as stored in the file"
    if contents.fp32_masters is not None:
        if use_fp32_master:
            # Before renaming: the masters have the authors' shapes (their attention conv is K×C×1×1).
            before = state
            state, note = apply_fp32_masters(state, contents.fp32_masters, parameter_key_names(model))
            weights = "fp32_master" if state is not before else "stored"
        else:
            note = "fp16 weights used (use_fp32_master=False)"
    state = to_model_key_names(state, model_state)
    state = {k: v for k, v in state.items() if not _counter_the_model_does_not_keep(k, model_state)}

    missing, unexpected, wrong_shape = compare_keys(state, model_state)
    if wrong_shape or (strict and (missing or unexpected)):
        raise CheckpointMismatchError(
            _mismatch_message(
                contents.path,
                contents.model_name,
                model,
                state,
                model_state,
                missing,
                unexpected,
                wrong_shape,
            )
        )
    casted = {k: v.to(dtype=model_state[k].dtype) for k, v in state.items() if k in model_state}
    model.load_state_dict(casted, strict=strict)
    return LoadInfo(
        path=contents.path,
        source_format=contents.source_format,
        model_name=contents.model_name,
        weights=weights,
        note=note,
        missing_keys=tuple(missing),
        unexpected_keys=tuple(unexpected),
        metadata=contents.metadata,
    )


def _counter_the_model_does_not_keep(key: str, model_state: dict[str, Tensor]) -> bool:
    """A BatchNorm's ``num_batches_tracked`` for a layer that keeps running statistics but no counter
    (torchvision's ``FrozenBatchNorm2d``, e.g. after ``freeze_norm(model, "all")``), which ignores it."""
    layer, _, name = key.rpartition(".")
    prefix = f"{layer}." if layer else ""
    return name == "num_batches_tracked" and key not in model_state and f"{prefix}running_mean" in model_state


def _mismatch_message(
    path: str,
    model_name: str | None,
    model: nn.Module,
    state: dict[str, Tensor],
    model_state: dict[str, Tensor],
    missing: list[str],
    unexpected: list[str],
    wrong_shape: list[str],
) -> str:
    says = f" (the file says it holds {model_name!r})" if model_name else ""
    parts = [f"{path}{says} does not fit the {type(model).__name__} model; nothing was loaded."]
    if wrong_shape:
        shown = ", ".join(
            f"{k}: file {list(state[k].shape)} vs model {list(model_state[k].shape)}"
            for k in wrong_shape[:_SHOWN]
        )
        parts.append(f"{len(wrong_shape)} shape mismatches, e.g. {shown}.")
    if missing:
        shown = ", ".join(f"{k} {list(model_state[k].shape)}" for k in missing[:_SHOWN])
        parts.append(f"{len(missing)} model keys missing from the file, e.g. {shown}.")
    if unexpected:
        shown = ", ".join(f"{k} {list(state[k].shape)}" for k in unexpected[:_SHOWN])
        parts.append(f"{len(unexpected)} file keys the model lacks, e.g. {shown}.")
    parts.append("Another architecture or num_classes?")
    if (missing or unexpected) and not wrong_shape:
        parts.append("strict=False loads the matching keys and lists the others.")
    return " ".join(parts)
