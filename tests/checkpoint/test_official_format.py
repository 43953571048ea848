"""Reading the authors' released files (legacy format, apex FP16_Optimizer state) without apex."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from attentive_norm.checkpoint import read_checkpoint
from attentive_norm.checkpoint.apex_stub import ApexLossScalerStub
from attentive_norm.checkpoint.safe_load import safe_torch_load
from attentive_norm.checkpoint.testing import official_state_from_model, write_official_checkpoint


@pytest.fixture
def official_file(tiny: nn.Module, tmp_path: Path) -> Path:
    path = tmp_path / "model_best.pth.tar"
    write_official_checkpoint(*official_state_from_model(tiny), path, arch="tiny_an")
    return path


def test_file_is_in_the_authors_format(official_file: Path) -> None:
    data = official_file.read_bytes()
    assert not data.startswith(b"PK"), "legacy (non-zip) serialisation"
    assert "apex" not in sys.modules, "the fake apex module is gone after writing"
    assert b"apex.fp16_utils.loss_scaler" in data and b"LossScaler" in data
    with pytest.raises(Exception, match="apex"):
        torch.load(official_file, weights_only=True)


def test_read_without_apex(official_file: Path) -> None:
    contents = read_checkpoint(official_file)
    assert contents.source_format == "official" and contents.model_name == "tiny_an"
    assert all(k.startswith("module.network.") for k in contents.state_dict)
    state = {k.removeprefix("module.network."): v for k, v in contents.state_dict.items()}
    assert state["conv1.weight"].dtype == torch.float16
    assert state["bn1.weight"].dtype == torch.float32 and state["bn1.running_var"].dtype == torch.float32
    assert state["bn2.weight_"].dtype == torch.float16 and state["bn2.running_mean"].dtype == torch.float16
    assert state["bn2.attention_weights.attention.0.weight"].shape == (4, 8, 1, 1)
    assert state["bn2.attention_weights.attention.1.weight"].dtype == torch.float32
    assert state["bn2.num_batches_tracked"].dtype == torch.int64
    # conv1, conv2, AN mixture weight and bias, attention conv, fc weight and bias
    assert [tuple(m.shape) for m in contents.fp32_masters] == [
        (8, 3, 3, 3),
        (8, 8, 3, 3),
        (4, 8),
        (4, 8),
        (4, 8, 1, 1),
        (5, 8),
        (5,),
    ]
    assert all(m.dtype == torch.float32 for m in contents.fp32_masters)


def test_loss_scaler_becomes_inert_record(official_file: Path) -> None:
    from attentive_norm.checkpoint.apex_stub import APEX_SAFE_GLOBALS

    obj = safe_torch_load(official_file, allowed_globals=APEX_SAFE_GLOBALS)
    scaler = obj["optimizer"]["loss_scaler"]
    assert type(scaler) is ApexLossScalerStub and scaler.state == {"cur_scale": 128.0}
    assert torch.equal(obj["best_prec1"], torch.tensor(78.41))
    assert "apex" not in sys.modules


def test_cuda_tensors_in_file_load_on_cpu(tiny: nn.Module, tmp_path: Path, monkeypatch) -> None:
    """The released files were saved from GPUs: their storages are tagged ``cuda:0``."""
    import torch.serialization

    path = tmp_path / "model_best.pth.tar"
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        write_official_checkpoint(*official_state_from_model(tiny), path)
    assert b"cuda:0" in path.read_bytes()
    contents = read_checkpoint(path)
    assert all(t.device.type == "cpu" for t in contents.state_dict.values())
    assert all(t.device.type == "cpu" for t in contents.fp32_masters)
