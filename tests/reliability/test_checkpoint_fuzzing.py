"""Fuzzing checkpoint bytes (hypothesis): truncated, bit-flipped, overwritten, spliced or random files in
every format give the stored weights or a CheckpointError naming the file, never another exception, a
hang or a crash. Our safetensors files and zip-format torch files are integrity-checked, so whatever
loads from them is exactly what was saved; legacy torch files (the authors') carry no checksum.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from attentive_norm.checkpoint import CheckpointError, load_checkpoint, save_weights
from attentive_norm.checkpoint.testing import official_state_from_model, write_official_checkpoint
from attentive_norm.layers import AttentiveBatchNorm2d

FUZZ = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
CHECKED = ("safetensors", "zip")


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), AttentiveBatchNorm2d(4, 2), nn.Conv2d(4, 2, 1))


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, bytes]:
    """The same weights in every format: ours (safetensors), torch zip and legacy, the authors'."""
    folder = tmp_path_factory.mktemp("originals")
    model = tiny()
    save_weights(model, folder / "w.safetensors", {"model": "tiny"})
    files = {"safetensors": (folder / "w.safetensors").read_bytes()}
    for name, zipped in (("zip", True), ("legacy", False)):
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer, _use_new_zipfile_serialization=zipped)
        files[name] = buffer.getvalue()
    write_official_checkpoint(*official_state_from_model(model), folder / "official.pth.tar", arch="tiny")
    files["official"] = (folder / "official.pth.tar").read_bytes()
    return files


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` truncated, with bits flipped, a stretch overwritten, bytes inserted, or replaced."""
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "garbage"]))
    at = draw(st.integers(0, len(data) - 1))
    if kind == "truncate":
        return data[:at]
    if kind == "flip":
        flipped = bytearray(data)
        for pos in [at, *draw(st.lists(st.integers(0, len(data) - 1), max_size=3))]:
            flipped[pos] ^= 1 << draw(st.integers(0, 7))
        return bytes(flipped)
    noise = draw(st.binary(min_size=1, max_size=64))
    if kind == "overwrite":
        return data[:at] + noise + data[at + len(noise) :]
    if kind == "insert":
        return data[:at] + noise + data[at:]
    return draw(st.binary(max_size=2048))


@pytest.mark.parametrize("fmt", ["safetensors", "zip", "legacy", "official"])
def test_damaged_files_load_exactly_or_fail_clearly(originals, tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"damaged.{fmt}"
    expected = tiny().state_dict()

    @FUZZ
    @given(data=damaged(originals[fmt]))
    def check(data: bytes) -> None:
        path.write_bytes(data)
        model = tiny()
        try:
            load_checkpoint(model, path)
        except CheckpointError as exc:
            assert str(path) in str(exc)
            return
        if fmt in CHECKED or data == originals[fmt]:
            for key, value in model.state_dict().items():
                assert torch.equal(value, expected[key].to(value.dtype)), key

    check()


@pytest.mark.parametrize(("flag", "meaning"), [(0x1, "encrypted"), (0x40, "strongly encrypted")])
def test_zip_records_with_damaged_flags_fail_clearly(
    originals, tmp_path: Path, flag: int, meaning: str
) -> None:
    """Found by the fuzzer: one flipped flag bit in the zip directory made zipfile raise RuntimeError
    ("File ... is encrypted") instead of a clear CheckpointError."""
    data = bytearray(originals["zip"])
    at = data.rfind(b"PK\x01\x02")  # the last central-directory record; its flags are 8 bytes in
    data[at + 8] |= flag
    path = tmp_path / f"{meaning.replace(' ', '-')}.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tiny(), path)
