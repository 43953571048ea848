"""Loading torch checkpoint files without ever executing code from them.

``torch.load(weights_only=True)`` unpickles with an allow-list of globals (tensors, containers,
plain numbers); anything else (a class, ``os.system``) is refused before it is called. This module
adds what that leaves out: an error that names the file and the offending global, a CRC check of
zip-format files (torch itself does not verify them, so a flipped bit in a tensor would load
silently) and one error type for truncated or corrupt files.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import CorruptCheckpointError, UnsafeCheckpointError

_ZIP_MAGIC = b"PK\x03\x04"
_GLOBAL_RE = re.compile(r"GLOBAL\s+([\w.]+)")
_LEGACY_PICKLES = 5
_PICKLE_PREFIX_BYTES = 64 * 1024 * 1024
_TORCH_MODULES = ("torch.", "collections.", "_codecs.")
_INERT_BUILTINS = {f"builtins.{t}" for t in ("set", "frozenset", "slice", "complex", "bytearray")}
_REASON_MARK = "WeightsUnpickler error:"


def safe_torch_load(path: str | os.PathLike, *, allowed_globals: Sequence[Any] = ()) -> Any:
    """Load a ``torch.save`` file (zip or legacy format) onto the CPU without running code from it.

    Args:
        path: the file.
        allowed_globals: extra globals the unpickler may resolve, in the forms
            ``torch.serialization.safe_globals`` accepts (a class, or ``(class, "module.Name")``).
            Only pass inert classes you defined yourself.

    Raises:
        UnsafeCheckpointError: the file needs a global outside the allow-list (named in the message).
        CorruptCheckpointError: the file is truncated, fails its zip CRC check or is not a checkpoint.
    """
    path = Path(path)
    with open(path, "rb") as f:
        is_zip = f.read(4) == _ZIP_MAGIC
    if is_zip:
        _verify_zip(path)
    guard = torch.serialization.safe_globals(list(allowed_globals)) if allowed_globals else None
    try:
        with guard or contextlib.nullcontext():
            return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        found = _GLOBAL_RE.search(str(exc))
        refused = found.group(1) if found else None
        named = [] if is_zip else _pickled_globals(path)
        # A legacy pickle cut inside a GLOBAL opcode also reads as an odd global: only a global that
        # the file names in a whole opcode makes it unsafe rather than damaged.
        if refused and (is_zip or any(n == refused or n.endswith(f".{refused}") for n in named)):
            raise UnsafeCheckpointError(
                f"{path}: refusing to load: it needs the global {refused!r}, which is not an "
                "allowed tensor/container type; unpickling it could run code from the file"
            ) from exc
        if refused:
            raise CorruptCheckpointError(f"{path}: damaged: its pickle breaks off in a name") from exc
        # torch stopped before any global (e.g. a plain pickle.dump file): say what it would have called.
        foreign = [n for n in named if not n.startswith(_TORCH_MODULES) and n not in _INERT_BUILTINS]
        if foreign:
            raise UnsafeCheckpointError(
                f"{path}: refusing to load: not a torch.save file, and its pickle needs the global "
                f"{foreign[0]!r}; unpickling it could run code from the file"
            ) from exc
        raise CorruptCheckpointError(
            f"{path}: not a PyTorch checkpoint, or a damaged one ({_unpickler_reason(exc)})"
        ) from exc
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as exc:  # anything else while decoding a safely-unpickled file means it is damaged
        raise CorruptCheckpointError(
            f"{path}: truncated or corrupt checkpoint ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc


def _verify_zip(path: Path) -> None:
    """Check every record of a zip-format checkpoint against its stored CRC-32."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as exc:  # BadZipFile, EOFError, zlib.error, and RuntimeError/NotImplementedError for
        # damaged flag bits (an "encrypted" record, an unknown compression method): all mean a damaged file
        raise CorruptCheckpointError(
            f"{path}: truncated or corrupt zip checkpoint ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    if bad is not None:
        raise CorruptCheckpointError(f"{path}: record {bad!r} fails its CRC check (the file is corrupt)")


def _pickled_globals(path: Path) -> list[str]:
    """The globals (``module.name``) that the file's pickles name, in order, up to the first damaged
    opcode. Parses opcodes only (``pickletools``), never builds objects, so nothing from the file runs."""
    names: list[str] = []
    strings: list[str] = []  # STACK_GLOBAL takes its module and name from the two strings before it
    with open(path, "rb") as f:
        # In memory: a damaged length field must not make the reader allocate it (BytesIO stops at
        # the end); the pickles come before the tensor data, so a bounded prefix holds them.
        stream = io.BytesIO(f.read(_PICKLE_PREFIX_BYTES))
    try:
        for _ in range(_LEGACY_PICKLES):
            for opcode, argument, _position in pickletools.genops(stream):
                if opcode.name == "GLOBAL":
                    names.append(argument.replace(" ", ".").replace("__builtin__.", "builtins."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(".".join(strings[-2:]))
                elif isinstance(argument, str):
                    strings.append(argument)
    except Exception:  # damaged bytes stop the opcode reader in many ways; the names so far stand
        pass
    return names


def _unpickler_reason(exc: BaseException) -> str:
    """The unpickler's own reason, without torch's advice around it (which suggests
    ``weights_only=False``, the one thing never to do with a file that fails here)."""
    text = str(exc)
    if _REASON_MARK in text:
        text = text.split(_REASON_MARK, 1)[1].strip()
    return _first_line(Exception(text))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"
