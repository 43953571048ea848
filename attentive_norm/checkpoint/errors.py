"""The checkpoint errors: one base class, so callers can catch every checkpoint problem at once."""

from __future__ import annotations


class CheckpointError(Exception):
    """A checkpoint could not be saved or loaded; the message names the file and the cause."""


class CheckpointSaveError(CheckpointError, OSError):
    """Saving failed (disk full, read-only folder, unpicklable object); the previous file is intact."""


class UnsafeCheckpointError(CheckpointError):
    """The file would need globals (classes, functions) outside the allowed set to be unpickled."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated, bit-flipped or not a checkpoint at all."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's tensors do not fit the model (other architecture, missing or extra keys)."""
