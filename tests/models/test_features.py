"""The model contract's feature extractor, on a toy model that follows the contract."""

import copy

import pytest
import torch
from torch import Tensor, nn

from attentive_norm.models import create_model, list_models
from attentive_norm.models.features import FeatureExtractor, build_model


class _Toy(nn.Module):
    """Three stride-2 stages, a pooled linear classifier: the smallest model following the contract."""

    def __init__(self, num_classes: int = 5, width: int = 4) -> None:
        super().__init__()
        self.num_classes = num_classes
        chs = [width, 2 * width, 4 * width]
        self.stages = nn.Sequential(
            *(nn.Conv2d(i, o, 3, stride=2, padding=1) for i, o in zip([3, *chs[:-1]], chs))
        )
        self.num_features = chs[-1]
        self.feature_info = [
            {"num_chs": c, "reduction": 2 ** (i + 1), "module": f"stages.{i}"} for i, c in enumerate(chs)
        ]
        self.fc = nn.Linear(self.num_features, num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def test_extractor_returns_declared_maps_and_drops_classifier() -> None:
    extractor = FeatureExtractor(_Toy())
    assert extractor.out_channels == [4, 8, 16]
    assert isinstance(extractor.model.fc, nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    feats = extractor(x)
    for f, info in zip(feats, extractor.feature_info, strict=True):
        assert f.shape == (2, info["num_chs"], 32 // info["reduction"], 32 // info["reduction"])
    assert torch.equal(feats[-1], extractor.model.forward_features(x))
    sum(f.sum() for f in feats).backward()
    assert all(p.grad is not None for p in extractor.parameters())


def test_out_indices_and_errors() -> None:
    extractor = FeatureExtractor(_Toy(), out_indices=(0, -1))
    assert extractor.out_indices == (0, 2)
    assert [f.shape[1] for f in extractor(torch.randn(1, 3, 16, 16))] == [4, 16]
    with pytest.raises(ValueError):
        FeatureExtractor(_Toy(), out_indices=(3,))
    with pytest.raises(ValueError):
        FeatureExtractor(_Toy(), out_indices=(1, 0))
    with pytest.raises(ValueError):
        build_model(_Toy, out_indices=(0,))


def test_build_model() -> None:
    assert isinstance(build_model(_Toy, num_classes=3), _Toy)
    assert isinstance(build_model(_Toy, features_only=True, out_indices=(1,)), FeatureExtractor)


def test_deepcopy_is_independent_and_holds_no_tensors() -> None:
    extractor = FeatureExtractor(_Toy())
    twin = copy.deepcopy(extractor)
    with torch.no_grad():
        for p in twin.parameters():
            p.zero_()
    x = torch.randn(1, 3, 16, 16)
    assert all(f.abs().sum() > 0 for f in extractor(x))
    assert all(f.abs().sum() == 0 for f in twin(x))
    assert not any("_feature_extractor_output" in m.__dict__ for m in extractor.modules())


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_follows_the_contract(name: str) -> None:
    model = create_model(name, num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[1] == model.num_features == model.feature_info[-1]["num_chs"]
        assert torch.allclose(model(x), model.forward_head(feats)) and model.num_classes == 3
        assert model.forward_head(feats, pre_logits=True).shape == (1, model.num_features)
        extractor = FeatureExtractor(model)
        maps = extractor(x)
    assert [tuple(f.shape[1:]) for f in maps] == [
        (info["num_chs"], 64 // info["reduction"], 64 // info["reduction"]) for info in model.feature_info
    ]
    assert model.num_classes == 0, "FeatureExtractor removes the classifier with reset_classifier(0)"
