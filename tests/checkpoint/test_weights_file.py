"""Our safetensors weight files: round trip, metadata, and refusal of truncated or bit-flipped files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from attentive_norm.checkpoint import CorruptCheckpointError, load_weights, save_weights


def test_roundtrip_with_metadata(tiny: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(tiny, path, {"model": "tiny", "source": "unit test"})
    tensors, meta = load_weights(path)
    for key, value in tiny.state_dict().items():
        assert torch.equal(tensors[key], value) and tensors[key].dtype == value.dtype
    assert meta["model"] == "tiny" and meta["source"] == "unit test" and meta["num_classes"] == "5"
    assert meta["format"] == "attentive_norm.weights" and meta["format_version"] == "1"
    assert len(meta["sha256"]) == 64
    # Still a standard safetensors file: other tools read it.
    assert set(safetensors.torch.load_file(path)) == set(tiny.state_dict())


def test_reserved_metadata_is_refused(tiny: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        save_weights(tiny, tmp_path / "w.safetensors", {"sha256": "0"})


def _payload_start(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def test_every_payload_bit_flip_position_is_detected(tiny: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(tiny, path, {"model": "tiny"})
    data = path.read_bytes()
    bad = tmp_path / "flipped.safetensors"
    for pos in range(_payload_start(data), len(data), 97):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << (pos % 8)
        bad.write_bytes(bytes(flipped))
        with pytest.raises(CorruptCheckpointError, match=r"flipped\.safetensors.*SHA-256"):
            load_weights(bad)


def test_edited_tensor_table_is_detected(tiny: nn.Module, tmp_path: Path) -> None:
    """Swapping two same-shaped tensors' offsets keeps a valid file; the hash covers the table too."""
    path = tmp_path / "w.safetensors"
    save_weights(tiny, path)
    data = path.read_bytes()
    header = json.loads(data[8 : _payload_start(data)])
    a, b = "bn1.running_mean", "bn1.running_var"
    offsets_a, offsets_b = header[a]["data_offsets"], header[b]["data_offsets"]
    header[a]["data_offsets"], header[b]["data_offsets"] = offsets_b, offsets_a
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    edited = tmp_path / "edited.safetensors"
    edited.write_bytes(len(text).to_bytes(8, "little") + text + data[_payload_start(data) :])
    assert torch.equal(safetensors.torch.load_file(edited)[a], tiny.bn1.running_var)
    with pytest.raises(CorruptCheckpointError, match=r"edited\.safetensors"):
        load_weights(edited)


@pytest.mark.parametrize("keep", [0, 4, 8, 20, 0.5, 0.99])
def test_truncation_is_detected(tiny: nn.Module, tmp_path: Path, keep: float) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(tiny, path)
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(CorruptCheckpointError, match=r"cut\.safetensors"):
        load_weights(cut)


def test_header_bit_flip_is_detected(tiny: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(tiny, path)
    data = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    for pos in range(0, _payload_start(data), 13):
        flipped = bytearray(data)
        flipped[pos] ^= 0x04
        bad.write_bytes(bytes(flipped))
        with pytest.raises(CorruptCheckpointError, match=r"bad\.safetensors"):
            load_weights(bad)


def test_another_tools_safetensors_loads_without_a_hash(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"w": torch.arange(3.0)}, path, metadata={"format": "pt"})
    tensors, metadata = load_weights(path)
    assert torch.equal(tensors["w"], torch.arange(3.0)) and metadata == {"format": "pt"}


def test_ours_without_its_hash_is_refused(tiny: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(tiny, path)
    tensors, metadata = load_weights(path)
    del metadata["sha256"]
    stripped = tmp_path / "stripped.safetensors"
    safetensors.torch.save_file(tensors, stripped, metadata=metadata)
    with pytest.raises(CorruptCheckpointError, match=r"stripped\.safetensors.*sha256.*missing"):
        load_weights(stripped)
