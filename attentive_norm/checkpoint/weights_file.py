"""Our weight files: safetensors with a small metadata header and a SHA-256 of the tensor payload.

safetensors never unpickles (the header is JSON, the payload raw bytes), so loading it cannot run
code, but it has no checksum: a flipped bit in a tensor would load silently. ``save_weights`` records
a SHA-256 in the metadata, over the rest of the header (tensor names, dtypes, shapes, offsets and the
other metadata) and the payload (every byte after the header); ``load_weights`` verifies it before
decoding anything, so a damaged file is refused as a whole, never half loaded. Other tools'
safetensors files (no hash) load without that check.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
from torch import Tensor, nn

from .atomic import atomic_write
from .errors import CorruptCheckpointError

FORMAT_NAME = "attentive_norm.weights"
FORMAT_VERSION = "1"
_RESERVED = ("format", "format_version", "sha256")
_HEADER_SIZE_BYTES = 8
_MAX_HEADER = 100 * 1024 * 1024


def save_weights(
    model: nn.Module | Mapping[str, Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, object] | None = None,
) -> None:
    """Write the model's state dict (or a state dict) to ``path`` as safetensors, atomically.

    ``metadata`` should name the ``model`` (its registry name) and the ``source`` it came from; values
    are stored as strings. ``num_classes`` is taken from the model when it has that attribute. The
    format name and version and the payload's SHA-256 are added here.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    clash = sorted(set(meta) & set(_RESERVED))
    if clash:
        raise ValueError(f"metadata keys {clash} are reserved (set by save_weights itself)")
    if isinstance(model, nn.Module) and isinstance(getattr(model, "num_classes", None), int):
        meta.setdefault("num_classes", str(model.num_classes))
    meta.update(format=FORMAT_NAME, format_version=FORMAT_VERSION)
    # The payload layout does not depend on the metadata: hash it once, then write it with the hash.
    meta["sha256"] = _digest(*_split(safetensors.torch.save(tensors, meta), path))
    data = safetensors.torch.save(tensors, meta)
    if _digest(*_split(data, path)) != meta["sha256"]:
        raise RuntimeError("safetensors wrote a different payload for the same tensors (unexpected)")
    atomic_write(path, lambda f: f.write(data))


def load_weights(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file: ``(tensors, metadata)``, on the CPU.

    Ours (written by :func:`save_weights`) are verified against their SHA-256 first. Another tool's
    (timm, Hugging Face) carry no hash and are read as they are; safetensors still checks the layout.

    Raises:
        CorruptCheckpointError: the file is truncated, its header is damaged or its payload does not
            match the recorded SHA-256 (or one of ours has lost it).
    """
    path = Path(path)
    data = path.read_bytes()
    header, payload = _split(data, path)
    metadata = header.get("__metadata__") or {}
    expected = metadata.get("sha256")
    if not expected and metadata.get("format") == FORMAT_NAME:
        raise CorruptCheckpointError(f"{path}: the sha256 our weight files carry is missing: damaged")
    actual = _digest(header, payload) if expected else None
    if actual != expected:
        raise CorruptCheckpointError(
            f"{path}: header or tensor payload fails its SHA-256 check (recorded {expected[:12]}..., "
            f"found {actual[:12]}...): the file is corrupt"
        )
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:
        raise CorruptCheckpointError(f"{path}: damaged safetensors file ({exc})") from exc
    return tensors, dict(metadata)


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a safetensors file (8-byte header length, then a JSON object)."""
    with open(path, "rb") as f:
        start = f.read(_HEADER_SIZE_BYTES + 1)
    if len(start) < _HEADER_SIZE_BYTES + 1:
        return False
    size = int.from_bytes(start[:_HEADER_SIZE_BYTES], "little")
    return 0 < size <= _MAX_HEADER and start[_HEADER_SIZE_BYTES : _HEADER_SIZE_BYTES + 1] == b"{"


def _digest(header: dict, payload: bytes) -> str:
    """SHA-256 of the header without the hash itself (canonical JSON), then the payload."""
    table = dict(header)
    table["__metadata__"] = {k: v for k, v in (header.get("__metadata__") or {}).items() if k != "sha256"}
    h = hashlib.sha256(json.dumps(table, sort_keys=True, separators=(",", ":")).encode())
    h.update(payload)
    return h.hexdigest()


def _split(data: bytes, path: str | os.PathLike) -> tuple[dict, bytes]:
    """Parse a safetensors byte string into (JSON header, payload bytes)."""
    if len(data) < _HEADER_SIZE_BYTES:
        raise CorruptCheckpointError(f"{path}: truncated safetensors file ({len(data)} bytes)")
    size = int.from_bytes(data[:_HEADER_SIZE_BYTES], "little")
    end = _HEADER_SIZE_BYTES + size
    if size > _MAX_HEADER or end > len(data):
        raise CorruptCheckpointError(f"{path}: truncated or damaged safetensors header")
    try:
        header = json.loads(data[_HEADER_SIZE_BYTES:end])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpointError(f"{path}: damaged safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path}: damaged safetensors header (not a JSON object)")
    return header, data[end:]
