"""Atomic file writes: a crash or a full disk never leaves a half-written checkpoint behind.

The data goes to a temporary file in the destination folder (same file system, so the final
``os.replace`` is atomic), is flushed and fsynced, then replaces the destination; the folder is
fsynced last so the rename itself survives a power cut. A process killed mid-write (``kill -9``)
cannot clean up: its temporary file stays until :func:`remove_stale_temporaries` removes it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from .errors import CheckpointSaveError

_TOKEN_BYTES = 6


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a temporary binary file, then atomically move it to ``path``.

    On any failure the previous file at ``path`` (if any) is left untouched, the temporary file is
    removed and a :class:`CheckpointSaveError` naming ``path`` and the cause is raised.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    tmp: str | None = None
    try:
        name = str(folder / f".{path.name}.{secrets.token_hex(_TOKEN_BYTES)}.tmp")
        # 0o666 before the umask: the same permissions a plain ``open(path, "wb")`` would give.
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        tmp = name
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(folder)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if not isinstance(exc, Exception):
            raise
        raise CheckpointSaveError(f"could not save {path}: {type(exc).__name__}: {exc}") from exc


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, atomically: see :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that interrupted writes to ``path`` left behind; returns them.

    Only call it while no other process writes ``path``.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{{2 * _TOKEN_BYTES}}}\.tmp")
    folder = path.parent if str(path.parent) else Path(".")
    stale = sorted(p for p in folder.iterdir() if pattern.fullmatch(p.name)) if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _fsync_folder(folder: Path) -> None:
    """Persist the folder entry of the renamed file (a no-op where folders cannot be opened)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
