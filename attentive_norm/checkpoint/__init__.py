"""Checkpoints: safe loading of ours and the authors' files, safetensors export, atomic saving."""

from .atomic import atomic_save, atomic_write
from .errors import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointSaveError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
)
from .safe_load import safe_torch_load

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointSaveError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "atomic_save",
    "atomic_write",
    "safe_torch_load",
]
