"""atomic_save: the destination is either the old file or the complete new one, never a partial file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from attentive_norm.checkpoint.atomic import atomic_save, atomic_write
from attentive_norm.checkpoint.errors import CheckpointSaveError


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_roundtrip_and_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    atomic_save({"a": torch.arange(3)}, path)
    atomic_save({"a": torch.arange(5)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(5))
    assert _leftovers(tmp_path) == []


def test_permissions_follow_umask(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    atomic_save({}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


class _FailsHalfway:
    def __reduce__(self) -> tuple:
        raise RuntimeError("cannot pickle this")


def test_failure_while_writing_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    atomic_save({"a": torch.ones(2)}, path)
    before = path.read_bytes()
    with pytest.raises(CheckpointSaveError, match=r"ckpt\.pth.*cannot pickle this"):
        atomic_save({"big": torch.zeros(10_000), "bad": _FailsHalfway()}, path)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_disk_full_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ckpt.pth"
    atomic_save({"a": torch.ones(2)}, path)
    before = path.read_bytes()

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(CheckpointSaveError, match=r"ckpt\.pth.*No space left") as info:
        atomic_save({"a": torch.zeros(2)}, path)
    assert isinstance(info.value, OSError)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_unwritable_folder_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "ckpt.pth"
    with pytest.raises(CheckpointSaveError, match=r"no/such/ckpt\.pth"):
        atomic_save({}, missing)


def test_interrupt_removes_temp_and_propagates(tmp_path: Path) -> None:
    def interrupted(f: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x.bin", interrupted)
    assert list(tmp_path.iterdir()) == []
