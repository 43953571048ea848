"""Checkpoints: safe loading of ours and the authors' files, safetensors export, atomic saving."""

from .atomic import atomic_save, atomic_write
from .errors import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointSaveError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
)
from .loader import LoadInfo, load_checkpoint
from .safe_load import safe_torch_load
from .sources import CheckpointContents, read_checkpoint
from .weights_file import load_weights, save_weights

__all__ = [
    "CheckpointContents",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointSaveError",
    "CorruptCheckpointError",
    "LoadInfo",
    "UnsafeCheckpointError",
    "atomic_save",
    "atomic_write",
    "load_checkpoint",
    "load_weights",
    "read_checkpoint",
    "safe_torch_load",
    "save_weights",
]
