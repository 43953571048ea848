"""Reading any supported checkpoint file into one shape: tensors, what the file says it is, fp32 masters.

Supported (detected from the content, not the file name):

- ``"safetensors"``: our weight files (:mod:`.weights_file`), integrity-checked;
- ``"training"``: our training checkpoints, a dict with the model state under ``"model"`` (and
  ``"args"``, whose ``"model"`` entry names the architecture);
- ``"official"``: the authors' ``model_best.pth.tar`` (``{'epoch', 'arch', 'state_dict',
  'best_prec1', 'optimizer'}``, apex ``FP16_Optimizer`` state with ``fp32_from_fp16`` masters);
- ``"state_dict"``: a plain mapping of names to tensors, or one wrapped as ``{"state_dict": ...}``.

Torch files are read with :func:`.safe_load.safe_torch_load`, allowing only the inert apex stand-ins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from .apex_stub import APEX_SAFE_GLOBALS
from .errors import CheckpointError
from .safe_load import safe_torch_load
from .weights_file import is_safetensors, load_weights


@dataclass
class CheckpointContents:
    """What a checkpoint file holds, independent of its format."""

    state_dict: dict[str, Tensor]
    source_format: str
    model_name: str | None = None
    fp32_masters: list[Tensor] | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def read_checkpoint(path: str | os.PathLike) -> CheckpointContents:
    """Read ``path`` (any supported format) without running code from it; see the module docstring."""
    path = Path(path)
    if is_safetensors(path):
        tensors, metadata = load_weights(path)
        return CheckpointContents(tensors, "safetensors", metadata.get("model"), None, metadata)
    obj = safe_torch_load(path, allowed_globals=APEX_SAFE_GLOBALS)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: expected a dict of tensors or a checkpoint dict, got {type(obj).__name__}"
        )
    if isinstance(obj.get("state_dict"), Mapping):
        optimizer = obj.get("optimizer")
        masters = _apex_masters(optimizer, path) if isinstance(optimizer, Mapping) else None
        official = masters is not None or "best_prec1" in obj
        return CheckpointContents(
            _tensors(obj["state_dict"], path, "state_dict"),
            "official" if official else "state_dict",
            _name(obj.get("arch")),
            masters,
        )
    if isinstance(obj.get("model"), Mapping):
        args = obj.get("args")
        name = args.get("model") if isinstance(args, Mapping) else None
        return CheckpointContents(_tensors(obj["model"], path, "model"), "training", _name(name))
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return CheckpointContents(_tensors(obj, path, None), "state_dict")
    raise CheckpointError(
        f"{path}: not a recognised checkpoint layout (top-level keys: {sorted(map(str, obj))[:8]}); "
        "expected a state dict, {'model': ..., 'args': ...} or {'state_dict': ...}"
    )


def _apex_masters(optimizer: Mapping[str, Any], path: Path) -> list[Tensor] | None:
    """The fp32 master copies of apex's ``FP16_Optimizer`` state, flattened over parameter groups."""
    groups = optimizer.get("fp32_from_fp16")
    if groups is None:
        return None
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, (list, tuple)) for g in groups):
        raise CheckpointError(f"{path}: optimizer['fp32_from_fp16'] is not a list of parameter groups")
    masters = [t for group in groups for t in group]
    if not all(isinstance(t, Tensor) for t in masters):
        raise CheckpointError(f"{path}: optimizer['fp32_from_fp16'] holds something other than tensors")
    return masters


def _tensors(state: Mapping[Any, Any], path: Path, where: str | None) -> dict[str, Tensor]:
    """Check that ``state`` maps strings to tensors and return it as a plain dict."""
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        place = f"[{where!r}]" if where else ""
        raise CheckpointError(f"{path}: state dict{place} has non-tensor entries, e.g. {bad[:3]!r}")
    return dict(state)


def _name(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
