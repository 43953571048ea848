"""create_model: default class counts, and ``pretrained`` with features_only, another num_classes and
bad values; load_checkpoint through DataParallel and torch.compile wrappers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from attentive_norm.checkpoint import CheckpointMismatchError, load_checkpoint, save_weights
from attentive_norm.checkpoint.testing import (
    official_state_from_model,
    randomize_state,
    write_official_checkpoint,
)
from attentive_norm.models import create_model
from attentive_norm.models.features import FeatureExtractor

MODEL = "resnet20_an"  # small: fast to build


@pytest.fixture
def source() -> nn.Module:
    model = create_model(MODEL)
    randomize_state(model)
    return model.eval()


def _authors_file(model: nn.Module, path: Path) -> Path:
    write_official_checkpoint(*official_state_from_model(model), path, arch=MODEL)
    return path


def _backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


def _assert_same_backbone(loaded: nn.Module, source: nn.Module, atol: float) -> None:
    expected = _backbone_state(source)
    got = _backbone_state(loaded)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key].float(), value.float(), atol=atol, rtol=0, msg=key)


def test_default_class_counts() -> None:
    assert create_model("resnet20").num_classes == 10  # CIFAR ResNets
    assert create_model("resnet56_an").num_classes == 10
    assert create_model("mobilenetv2").num_classes == 1000


@pytest.mark.parametrize("value", [True, 1, 3.5])
def test_pretrained_takes_a_path(value: object) -> None:
    with pytest.raises(TypeError, match=r"checkpoint path .*nothing is ever downloaded"):
        create_model(MODEL, pretrained=value)


@pytest.mark.parametrize("value", [None, False, ""])
def test_no_pretrained_is_random_weights(value: object) -> None:
    assert create_model(MODEL, pretrained=value).num_classes == 10


def test_features_only_with_the_authors_file(source: nn.Module, tmp_path: Path) -> None:
    path = _authors_file(source, tmp_path / "model_best.pth.tar")
    extractor = create_model(MODEL, features_only=True, out_indices=(-2, -1), pretrained=path)
    assert isinstance(extractor, FeatureExtractor) and len(extractor.out_channels) == 2
    _assert_same_backbone(extractor.model, source, atol=1e-3)  # fp16 buffers in the authors' format
    whole = create_model(MODEL)
    load_checkpoint(whole, path)
    reference = FeatureExtractor(whole, (-2, -1)).eval()
    x = torch.randn(2, 3, 32, 32)
    for got, expected in zip(extractor.eval()(x), reference(x)):
        torch.testing.assert_close(got, expected, atol=0, rtol=0)


@pytest.mark.parametrize("num_classes", [3, 0])
def test_other_num_classes_gets_a_fresh_classifier(
    source: nn.Module, tmp_path: Path, num_classes: int
) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(source, path, {"model": MODEL, "num_classes": "10"})
    model = create_model(MODEL, num_classes=num_classes, pretrained=path)
    _assert_same_backbone(model, source, atol=0)
    assert model.num_classes == num_classes
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, num_classes or model.num_features)


def test_file_stating_its_classes_sets_them(tmp_path: Path) -> None:
    trained = create_model(MODEL, num_classes=4)
    randomize_state(trained)
    path = tmp_path / "w.safetensors"
    save_weights(trained, path, {"model": MODEL, "num_classes": "4"})
    model = create_model(MODEL, pretrained=path)
    assert model.num_classes == 4
    torch.testing.assert_close(model.state_dict()["fc.weight"], trained.state_dict()["fc.weight"])


def test_unstated_classifier_mismatch_is_not_silently_replaced(tmp_path: Path) -> None:
    # A plain state dict says nothing about its classes: with num_classes left to the default the
    # user expects the file's classifier, so a mismatch is an error, not a fresh random classifier.
    trained = create_model(MODEL, num_classes=4)
    path = tmp_path / "state.pth"
    torch.save(trained.state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match=r"fc\.weight: file \[4, 64\] vs model \[10, 64\]"):
        create_model(MODEL, pretrained=path)


def test_another_architecture_is_refused_with_features_only(tmp_path: Path) -> None:
    path = tmp_path / "state.pth"
    torch.save(create_model("resnet20").state_dict(), path)  # BN, no AN layers
    with pytest.raises(CheckpointMismatchError, match="model keys missing"):
        create_model(MODEL, features_only=True, pretrained=path)
    with pytest.raises(CheckpointMismatchError, match="model keys missing"):
        create_model(MODEL, num_classes=3, pretrained=path)


def test_out_indices_needs_features_only(source: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "state.pth"
    torch.save(source.state_dict(), path)
    with pytest.raises(ValueError, match="out_indices only applies with features_only=True"):
        create_model(MODEL, out_indices=(1,), pretrained=path)


@pytest.mark.parametrize("wrap", [nn.DataParallel, torch.compile], ids=["DataParallel", "compile"])
def test_load_into_a_wrapped_model(source: nn.Module, tmp_path: Path, wrap) -> None:
    path = tmp_path / "state.pth"
    torch.save(wrap(source).state_dict(), path)  # the file carries the wrapper's key prefix
    for file in (path, _authors_file(source, tmp_path / "model_best.pth.tar")):
        model = create_model(MODEL)
        load_checkpoint(wrap(model), file)
        _assert_same_backbone(model, source, atol=1e-3)
