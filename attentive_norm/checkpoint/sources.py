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

import json
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
    """What a checkpoint file holds, independent of its format.

    ``model_name``, ``num_classes`` and ``model_kwargs`` are what the file says about the model, if it
    says (our training checkpoints' ``args``, our weight files' metadata, the authors' ``arch``).
    """

    path: str
    state_dict: dict[str, Tensor]
    source_format: str
    model_name: str | None = None
    num_classes: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    fp32_masters: list[Tensor] | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def read_checkpoint(path: str | os.PathLike) -> CheckpointContents:
    """Read ``path`` (any supported format) without running code from it; see the module docstring."""
    path = Path(path)
    if is_safetensors(path):
        tensors, metadata = load_weights(path)
        num_classes = metadata.get("num_classes", "")
        return CheckpointContents(
            str(path),
            tensors,
            "safetensors",
            model_name=metadata.get("model"),
            num_classes=int(num_classes) if num_classes.isdigit() else None,
            model_kwargs=_json_dict(metadata.get("model_kwargs"), path),
            metadata=metadata,
        )
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
            str(path),
            _tensors(obj["state_dict"], path, "state_dict"),
            "official" if official else "state_dict",
            model_name=_name(obj.get("arch")),
            fp32_masters=masters,
        )
    if isinstance(obj.get("model"), Mapping):
        args = obj.get("args") if isinstance(obj.get("args"), Mapping) else {}
        num_classes, kwargs = args.get("num_classes"), args.get("model_kwargs")
        return CheckpointContents(
            str(path),
            _tensors(obj["model"], path, "model"),
            "training",
            model_name=_name(args.get("model")),
            num_classes=num_classes if isinstance(num_classes, int) else None,
            model_kwargs=dict(kwargs) if isinstance(kwargs, Mapping) else {},
        )
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return CheckpointContents(str(path), _tensors(obj, path, None), "state_dict")
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


def _json_dict(text: str | None, path: Path) -> dict[str, Any]:
    """A JSON object stored as a metadata string (empty when absent)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata 'model_kwargs' is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: metadata 'model_kwargs' is not a JSON object")
    return value


def _name(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
