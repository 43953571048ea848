"""load_checkpoint on the small model: every format, prefixes, dtypes, masters, and mismatch errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from attentive_norm import freeze_norm
from attentive_norm.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    load_checkpoint,
    save_weights,
)
from attentive_norm.checkpoint.testing import (
    official_fp32_keys,
    official_state_from_model,
    write_official_checkpoint,
)


def _same_function(a: nn.Module, b: nn.Module, x: torch.Tensor, atol: float = 0.0) -> None:
    """Equal logits in eval and in training mode (batch statistics)."""
    for train in (False, True):
        a.train(train)
        b.train(train)
        torch.testing.assert_close(a(x), b(x), rtol=atol, atol=atol)


def _rounded_like_file(model: nn.Module, with_parameters: bool) -> nn.Module:
    """A copy holding what the authors' file can represent: fp16 roundings of the tensors it stores
    in fp16 (all of them, or only the buffers when the fp32 masters replace the parameters)."""
    copy_ = copy.deepcopy(model)
    keep = official_fp32_keys(copy_)
    parameters = {name for name, _ in copy_.named_parameters()}
    with torch.no_grad():
        for key, value in copy_.state_dict().items():
            if value.is_floating_point() and key not in keep and (with_parameters or key not in parameters):
                value.copy_(value.half().float())
    return copy_


def test_official_file_with_fp32_masters(tiny: nn.Module, make_tiny: type, tmp_path: Path) -> None:
    path = tmp_path / "model_best.pth.tar"
    write_official_checkpoint(*official_state_from_model(tiny), path, arch="tiny_an")
    model = make_tiny()
    info = load_checkpoint(model, path)
    assert info.source_format == "official" and info.model_name == "tiny_an"
    assert info.weights == "fp32_master" and "7 fp16 parameters" in info.note
    assert all(v.dtype in (torch.float32, torch.int64) for v in model.state_dict().values())
    _same_function(_rounded_like_file(tiny, with_parameters=False), model, torch.randn(4, 3, 8, 8))


def test_official_file_fp16_weights(tiny: nn.Module, make_tiny: type, tmp_path: Path) -> None:
    path = tmp_path / "model_best.pth.tar"
    write_official_checkpoint(*official_state_from_model(tiny), path)
    model = make_tiny()
    info = load_checkpoint(model, path, use_fp32_master=False)
    assert info.weights == "stored" and "use_fp32_master=False" in info.note
    _same_function(_rounded_like_file(tiny, with_parameters=True), model, torch.randn(4, 3, 8, 8))


def test_masters_not_matching_fall_back_to_fp16(tiny: nn.Module, make_tiny: type, tmp_path: Path) -> None:
    state, masters = official_state_from_model(tiny)
    for broken, reason in [
        (masters[:-1], "6 fp32 masters for 7 fp16 parameters"),
        (masters[1:] + masters[:1], "master shape"),
        ([m + 1.0 for m in masters], "does not round to its fp16 copy"),
    ]:
        path = tmp_path / "model_best.pth.tar"
        write_official_checkpoint(state, broken, path)
        model = make_tiny()
        info = load_checkpoint(model, path)
        assert info.weights == "stored" and reason in info.note
        _same_function(_rounded_like_file(tiny, with_parameters=True), model, torch.randn(4, 3, 8, 8))


@pytest.mark.parametrize("prefix", ["", "module.", "network.", "module.network."])
@pytest.mark.parametrize("layout", ["plain", "training", "wrapped"])
def test_our_torch_formats_and_prefixes(
    tiny: nn.Module, make_tiny: type, tmp_path: Path, prefix: str, layout: str
) -> None:
    state = {prefix + k: v for k, v in tiny.state_dict().items()}
    obj = {
        "plain": state,
        "training": {"model": state, "args": {"model": "tiny"}, "epoch": 3},
        "wrapped": {"state_dict": state},
    }[layout]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = make_tiny()
    info = load_checkpoint(model, path)
    assert info.source_format == ("training" if layout == "training" else "state_dict")
    assert info.model_name == ("tiny" if layout == "training" else None)
    _same_function(tiny, model, torch.randn(4, 3, 8, 8))


def test_safetensors(tiny: nn.Module, make_tiny: type, tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(tiny, path, {"model": "tiny", "source": "test"})
    model = make_tiny()
    info = load_checkpoint(model, path)
    assert info.source_format == "safetensors" and info.model_name == "tiny"
    assert info.metadata["source"] == "test"
    _same_function(tiny, model, torch.randn(4, 3, 8, 8))


def test_casts_to_model_dtype(tiny: nn.Module, make_tiny: type, tmp_path: Path) -> None:
    path = tmp_path / "model_best.pth.tar"
    write_official_checkpoint(*official_state_from_model(tiny), path)
    model = make_tiny().double()
    load_checkpoint(model, path)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    torch.testing.assert_close(model.fc.weight, tiny.fc.weight.double())


def test_other_num_classes_is_named_and_leaves_model_unchanged(
    tiny: nn.Module, make_tiny: type, tmp_path: Path
) -> None:
    path = tmp_path / "model_best.pth.tar"
    write_official_checkpoint(*official_state_from_model(tiny), path, arch="tiny_an")
    model = make_tiny(num_classes=3)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(model, path, strict=False)
    message = str(info.value)
    assert "model_best.pth.tar" in message and "'tiny_an'" in message and "nothing was loaded" in message
    assert "fc.weight: file [5, 8] vs model [3, 8]" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_missing_and_unexpected_keys_are_named(tiny: nn.Module, make_tiny: type, tmp_path: Path) -> None:
    state = tiny.state_dict()
    state["extra.weight"] = torch.ones(2, 2)
    del state["bn2.mixture_bias"]
    path = tmp_path / "ckpt.pth"
    torch.save({"model": state, "args": {"model": "tiny"}}, path)
    with pytest.raises(CheckpointMismatchError, match=r"says it holds 'tiny'") as info:
        load_checkpoint(make_tiny(), path)
    assert "bn2.mixture_bias [4, 8]" in str(info.value) and "extra.weight [2, 2]" in str(info.value)
    assert "strict=False" in str(info.value)

    model = make_tiny()
    result = load_checkpoint(model, path, strict=False)
    assert result.missing_keys == ("bn2.mixture_bias",) and result.unexpected_keys == ("extra.weight",)
    assert torch.equal(model.bn2.mixture_weight, tiny.bn2.mixture_weight)


def test_authors_other_architecture_is_refused(tmp_path: Path, make_tiny: type) -> None:
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    path = tmp_path / "model_best.pth.tar"
    write_official_checkpoint(*official_state_from_model(other), path, arch="resnet50")
    with pytest.raises(CheckpointMismatchError, match=r"'resnet50'.*missing.*conv1\.weight \[8, 3, 3, 3\]"):
        load_checkpoint(make_tiny(), path)


def test_unrecognised_layout(tmp_path: Path, make_tiny: type) -> None:
    path = tmp_path / "odd.pth"
    torch.save({"weights": [torch.ones(1)]}, path)
    with pytest.raises(CheckpointError, match=r"odd\.pth.*not a recognised checkpoint layout"):
        load_checkpoint(make_tiny(), path)


def test_fully_frozen_model_loads_a_checkpoint_with_batch_counters(
    tiny: nn.Module, make_tiny: type, tmp_path: Path
) -> None:
    # freeze_norm(..., "all") turns BatchNorm into torchvision's FrozenBatchNorm2d, which keeps no
    # num_batches_tracked (and ignores it on load): the counter in the file is not "unexpected".
    path = tmp_path / "ckpt.pth"
    torch.save(tiny.state_dict(), path)
    model = freeze_norm(make_tiny(), "all")
    assert "bn1.num_batches_tracked" not in model.state_dict()
    assert load_checkpoint(model, path).unexpected_keys == ()
    frozen_source = freeze_norm(copy.deepcopy(tiny), "all")
    _same_function(frozen_source, model, torch.randn(4, 3, 8, 8))


def test_counter_of_a_layer_the_model_lacks_is_still_unexpected(
    tiny: nn.Module, make_tiny: type, tmp_path: Path
) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save({**tiny.state_dict(), "bn9.num_batches_tracked": torch.tensor(3)}, path)
    with pytest.raises(CheckpointMismatchError, match=r"bn9\.num_batches_tracked"):
        load_checkpoint(make_tiny(), path)
