"""MobileNetV2 and MobileNetV2-AN: exact counts, torchvision and official layouts, contract, gradients."""

import gzip
import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from attentive_norm.layers import AttentiveBatchNorm2d
from attentive_norm.models import create_model
from attentive_norm.models.features import FeatureExtractor
from attentive_norm.models.flops import count_params
from attentive_norm.models.mobilenetv2 import mobilenetv2, mobilenetv2_an
from attentive_norm.models.official_keys import to_official_key_names

# the keys and shapes of the authors' released state dicts (shipped with the tests)
OFFICIAL_KEYS = json.loads(
    gzip.decompress(
        (Path(__file__).parents[1] / "reference" / "official_state_dict_keys.json.gz").read_bytes()
    )
)


@pytest.fixture(scope="module")
def official() -> dict:
    return OFFICIAL_KEYS["mobilenetv2_an"]


def test_parameter_counts(official: dict) -> None:
    assert count_params(mobilenetv2()) == 3_504_872 == count_params(torchvision.models.mobilenet_v2())
    assert count_params(mobilenetv2_an()) == 3_672_760 == official["num_params"]


def test_bn_model_is_torchvision_layout() -> None:
    ours, theirs = mobilenetv2(num_classes=10).eval(), torchvision.models.mobilenet_v2(num_classes=10).eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in theirs.state_dict().items()
    ]
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), theirs(x))


def test_an_keys_are_the_authors_in_order(official: dict) -> None:
    ours = to_official_key_names(mobilenetv2_an().state_dict())
    assert [(k, list(v.shape)) for k, v in ours.items()] == list(official["state_dict"].items())


def test_authors_state_dict_loads_strictly(official: dict) -> None:
    state = {
        k: torch.randn(shape) if shape else torch.tensor(3) for k, shape in official["state_dict"].items()
    }
    model = mobilenetv2_an()
    model.load_state_dict(state)
    dw_norm = model.features[17].conv[1][1]
    assert torch.equal(dw_norm.mixture_weight, state["features.17.conv.1.1.weight_"])
    assert torch.equal(
        dw_norm.attention.weight,
        state["features.17.conv.1.1.attention_weights.attention.0.weight"].flatten(1),
    )


def test_an_only_on_depthwise_norms() -> None:
    model = mobilenetv2_an()
    ans = {name: m.num_mixtures for name, m in model.named_modules() if isinstance(m, AttentiveBatchNorm2d)}
    expected_k = [5] * (1 + 2 + 3 + 4) + [10] * (3 + 3 + 1)
    assert list(ans.values()) == expected_k
    for name in ans:
        block = model.get_submodule(name.rsplit(".", 1)[0])
        assert block[0].groups == block[0].in_channels  # the depthwise 3×3
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 1 + 16 + 17 + 1


def test_forward_backward_every_parameter_gets_a_gradient() -> None:
    model = mobilenetv2_an(num_classes=7, num_mixtures=(2, 2, 2, 2, 3, 3, 3)).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    out.logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_contract_and_features_only() -> None:
    model = mobilenetv2_an(num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    feats = model.forward_features(x)
    torch.testing.assert_close(model(x), model.forward_head(feats))
    assert model.forward_head(feats, pre_logits=True).shape == (1, model.num_features)
    model.reset_classifier(0)
    assert model(x).shape == (1, 1280) and model.num_classes == 0

    extractor = create_model("mobilenetv2_an", features_only=True, out_indices=(1, 2, 3, 4)).eval()
    assert isinstance(extractor, FeatureExtractor)
    assert extractor.out_channels == [24, 32, 96, 1280] and extractor.reductions == [4, 8, 16, 32]
    for f, r, c in zip(extractor(x), extractor.reductions, extractor.out_channels, strict=True):
        assert f.shape == (1, c, 64 // r, 64 // r)


def test_bad_num_mixtures() -> None:
    with pytest.raises(ValueError, match="one K per group"):
        mobilenetv2_an(num_mixtures=(5, 10))
