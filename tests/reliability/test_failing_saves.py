"""A checkpoint save that fails (disk full, read-only folder) stops training with one clear message, leaves
the previous checkpoint intact and no partial file, and the run then resumes from that checkpoint.

The faults are real where the tests may mount file systems (root on Linux): a small tmpfs filled to the
last byte, then remounted read-only. Elsewhere they are simulated at the system-call boundary: ``fsync``
fails with ENOSPC (as on network file systems and quotas, which report a full disk there), ``open``
fails with EROFS.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from attentive_norm.checkpoint import safe_torch_load
from attentive_norm.cli.main import main
from attentive_norm.engine import state

# One epoch of 2 steps, a checkpoint after each: the second save fails.
TINY = ["--subset", "64", "--batch-size", "32", "--image-size", "12", "--threads", "1", "--no-progress"]
ARGV = ["train", *TINY, "--epochs", "1", "--save-every", "1", "--name", "run"]
MESSAGES = {"disk full": "No space left on device", "read-only": "Read-only file system"}


@functools.cache
def can_mount() -> bool:
    probe = Path(f"/tmp/attentive-norm-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        mounted = _run("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe))
        return mounted and _run("umount", str(probe))
    finally:
        probe.rmdir()


def _run(*command: str) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


class Fault:
    """Makes writing into ``folder`` fail (on a real tmpfs where possible, else simulated); repairs it."""

    def __init__(self, kind: str, folder: Path, real: bool, monkeypatch: pytest.MonkeyPatch) -> None:
        self.kind, self.folder, self.real, self.monkeypatch = kind, folder, real, monkeypatch

    def inject(self) -> None:
        if self.real and self.kind == "disk full":
            with open(self.folder / "filler", "wb") as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
                    os.fsync(f.fileno())
        elif self.real:
            assert _run("mount", "-o", "remount,ro", str(self.folder))
        elif self.kind == "disk full":
            self.monkeypatch.setattr(os, "fsync", self._no_space)
        else:
            self.monkeypatch.setattr(os, "open", functools.partial(self._read_only, os.open))

    def repair(self) -> None:
        self.monkeypatch.undo()
        if self.real:
            assert _run("mount", "-o", "remount,rw", str(self.folder))
            (self.folder / "filler").unlink(missing_ok=True)

    @staticmethod
    def _no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def _read_only(self, real_open: Callable, path: str, flags: int, *args: object) -> int:
        if str(path).startswith(str(self.folder)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)


@pytest.fixture(params=list(MESSAGES))
def fault(request, tmp_path, monkeypatch) -> Iterator[Fault]:
    """A fault of each kind in a fresh folder (a 16 MB tmpfs if the tests may mount)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    real = can_mount()
    if real:
        assert _run("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder))
    try:
        yield Fault(request.param, folder, real, monkeypatch)
    finally:
        if real:
            _run("umount", str(folder))


def test_a_failed_save_stops_cleanly_and_keeps_the_last_checkpoint(fault, monkeypatch, capsys):
    real_save, first = state.save, {}

    def save(snapshot: dict, path: os.PathLike) -> None:
        """The first write goes through (its bytes kept); the second meets the fault."""
        if first:
            fault.inject()
        real_save(snapshot, path)
        first.setdefault("bytes", Path(path).read_bytes())

    monkeypatch.setattr(state, "save", save)
    assert main([*ARGV, "--output", str(fault.folder)]) == 2
    err = capsys.readouterr().err
    run = fault.folder / "run"
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"attentive-norm: error: could not save {run / state.LAST}" in err and MESSAGES[fault.kind] in err
    assert "training stopped at step 2: the last good checkpoint (step 1) is kept" in err
    assert (run / state.LAST).read_bytes() == first["bytes"]
    assert safe_torch_load(run / state.LAST)["step"] == 1
    assert not list(run.glob("*.tmp"))

    fault.repair()  # room on the disk again, the folder writable again
    assert main(["train", "--resume", str(run)]) == 0
    assert safe_torch_load(run / state.LAST)["step"] == 2
