"""Crafted pickles that would run code on unpickling are refused before anything runs."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from attentive_norm.checkpoint import (
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_checkpoint,
    read_checkpoint,
    safe_torch_load,
)
from attentive_norm.checkpoint.apex_stub import ApexLossScalerStub
from attentive_norm.checkpoint.testing import (
    RunsPython,
    RunsShell,
    official_state_from_model,
    write_official_checkpoint,
)

FORMATS = {"zip": {}, "legacy": {"_use_new_zipfile_serialization": False}}


@pytest.mark.parametrize("payload", [RunsShell, RunsPython])
@pytest.mark.parametrize("fmt", FORMATS)
def test_code_in_plain_checkpoint_never_runs(tmp_path: Path, fmt: str, payload: type) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "x": payload(marker)}, path, **FORMATS[fmt])
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt.*(system|exec)"):
        safe_torch_load(path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt"):
        load_checkpoint(nn.Linear(2, 1), path)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [RunsShell, RunsPython])
@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_code_in_a_plain_pickle_is_called_unsafe(tmp_path: Path, payload: type, protocol: int) -> None:
    # pickle.dump (not torch.save): torch's unpickler stops before any global, so the error must come
    # from reading the opcodes, and it must not be "corrupt" with torch's advice to pass weights_only=False.
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": payload(marker)}}, f, protocol=protocol)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pth.*(system|exec)") as info:
        safe_torch_load(path)
    assert "weights_only" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [RunsShell, RunsPython])
def test_code_inside_authors_format_never_runs(tiny: nn.Module, tmp_path: Path, payload: type) -> None:
    """The apex allow-list opens the door for the loss scaler stand-in only, not for anything else."""
    marker = tmp_path / "marker"
    path = tmp_path / "model_best.pth.tar"
    write_official_checkpoint(*official_state_from_model(tiny), path, extra=payload(marker))
    with pytest.raises(UnsafeCheckpointError, match=r"model_best\.pth\.tar"):
        read_checkpoint(path)
    assert not marker.exists()


def _pickle_global(module: str, name: str, args: tuple) -> bytes:
    """A protocol-2 pickle that calls ``module.name(*args)`` (REDUCE), written opcode by opcode."""
    return b"\x80\x02" + f"c{module}\n{name}\n".encode() + pickle.dumps(args, protocol=2)[2:-1] + b"R."


def test_allowed_apex_name_cannot_be_used_to_call_something_else(tmp_path: Path) -> None:
    """Calling the apex name with arguments reaches only our inert stub, whose constructor takes none."""
    path = tmp_path / "reduce.pt"
    path.write_bytes(_legacy_file(_pickle_global("apex.fp16_utils.loss_scaler", "LossScaler", ("rm -rf /",))))
    with pytest.raises(CorruptCheckpointError, match=r"reduce\.pt.*ApexLossScalerStub"):
        read_checkpoint(path)


def test_stub_under_its_own_name_is_refused(tmp_path: Path) -> None:
    """Only the apex *names* map to the stub; the stub's real module path is not an allowed global."""
    path = tmp_path / "stub.pt"
    torch.save({"x": ApexLossScalerStub()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"apex_stub\.ApexLossScalerStub"):
        read_checkpoint(path)


def test_other_apex_globals_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    path.write_bytes(_legacy_file(_pickle_global("apex.fp16_utils.fp16_optimizer", "FP16_Optimizer", ())))
    with pytest.raises(UnsafeCheckpointError, match=r"apex\.fp16_utils\.fp16_optimizer\.FP16_Optimizer"):
        read_checkpoint(path)
    assert "apex" not in sys.modules


def _legacy_file(main_pickle: bytes) -> bytes:
    """Wrap a pickle in torch's legacy container (magic number, protocol, sys info, object, keys)."""
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    sys_info = {"protocol_version": PROTOCOL_VERSION, "little_endian": True, "type_sizes": {}}
    parts = [pickle.dumps(x, protocol=2) for x in (MAGIC_NUMBER, PROTOCOL_VERSION, sys_info)]
    return b"".join(parts) + main_pickle + pickle.dumps([], protocol=2)
