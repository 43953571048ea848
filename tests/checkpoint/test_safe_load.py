"""safe_torch_load: plain tensors load; foreign globals, truncation and bit flips give named errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from attentive_norm.checkpoint.errors import CorruptCheckpointError, UnsafeCheckpointError
from attentive_norm.checkpoint.safe_load import safe_torch_load

FORMATS = {"zip": {}, "legacy": {"_use_new_zipfile_serialization": False}}


class Opaque:
    """Some class the allow-list does not know."""


def _save(obj: object, path: Path, fmt: str) -> Path:
    torch.save(obj, path, **FORMATS[fmt])
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_loads_tensors_and_containers(tmp_path: Path, fmt: str) -> None:
    obj = {"w": torch.randn(3, 4).half(), "meta": [1, 2.5, "x", None], "n": torch.tensor(7)}
    loaded = safe_torch_load(_save(obj, tmp_path / "a.pt", fmt))
    assert torch.equal(loaded["w"], obj["w"]) and loaded["w"].dtype == torch.float16
    assert loaded["meta"] == obj["meta"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_refuses_unknown_class_and_names_it(tmp_path: Path, fmt: str) -> None:
    path = _save({"x": Opaque()}, tmp_path / "a.pt", fmt)
    with pytest.raises(UnsafeCheckpointError, match=rf"a\.pt.*{__name__}\.Opaque"):
        safe_torch_load(path)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("keep", [0.0, 0.01, 0.5, 0.999])
def test_truncated_file_is_named(tmp_path: Path, fmt: str, keep: float) -> None:
    data = _save({"w": torch.randn(64, 64)}, tmp_path / "full.pt", fmt).read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CorruptCheckpointError, match=r"cut\.pt"):
        safe_torch_load(cut)


def test_bit_flip_in_zip_tensor_data_is_detected(tmp_path: Path) -> None:
    w = torch.randn(64, 64)
    data = bytearray(_save({"w": w}, tmp_path / "a.pt", "zip").read_bytes())
    raw = w.numpy().tobytes()
    start = bytes(data).index(raw)
    data[start + len(raw) // 2] ^= 0x10
    flipped = tmp_path / "flipped.pt"
    flipped.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=r"flipped\.pt.*CRC"):
        safe_torch_load(flipped)


@pytest.mark.parametrize(
    "content",
    [b"hello, this is not a pickle\n", b"<html><body>404 Not Found</body></html>\n", os.urandom(4096)],
    ids=["text", "html", "random"],
)
def test_not_a_checkpoint(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError, match=r"notes\.txt") as info:
        safe_torch_load(path)
    message = str(info.value)
    assert "\n" not in message and "weights_only" not in message  # one line, no advice to load unsafely


def test_a_pickle_of_plain_containers_is_not_called_unsafe(tmp_path: Path) -> None:
    path = tmp_path / "plain.pkl"
    with open(path, "wb") as f:
        pickle.dump({"w": [1.0, 2.0], "tags": {"a", "b"}}, f, protocol=4)
    with pytest.raises(CorruptCheckpointError, match=r"plain\.pkl: not a PyTorch checkpoint"):
        safe_torch_load(path)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        safe_torch_load(tmp_path / "absent.pt")


def test_allowed_global_is_scoped_to_the_call(tmp_path: Path) -> None:
    path = _save({"x": Opaque()}, tmp_path / "a.pt", "zip")
    assert isinstance(safe_torch_load(path, allowed_globals=[Opaque])["x"], Opaque)
    with pytest.raises(UnsafeCheckpointError):
        safe_torch_load(path)
    assert Opaque not in torch.serialization.get_safe_globals()
    assert os.path.exists(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_truncation_point_is_corrupt(tmp_path: Path, fmt: str) -> None:
    data = _save({"w": torch.arange(4.0), "tag": "abc"}, tmp_path / "full.pt", fmt).read_bytes()
    cut = tmp_path / "cut.pt"
    for end in range(0, len(data), 7 if fmt == "zip" else 1):
        cut.write_bytes(data[:end])
        with pytest.raises(CorruptCheckpointError, match=r"cut\.pt"):
            safe_torch_load(cut)
