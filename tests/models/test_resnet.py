"""ResNet family: published parameter counts, the authors' state-dict layout, the model contract."""

import gzip
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from attentive_norm import AttentiveBatchNorm2d
from attentive_norm.models import create_model, list_models
from attentive_norm.models.features import FeatureExtractor
from attentive_norm.models.official_keys import to_official_key_names
from attentive_norm.models.resnet import Bottleneck, ResNet

# the keys and shapes of the authors' released state dicts (shipped with the tests)
OFFICIAL_KEYS = json.loads(
    gzip.decompress(
        (Path(__file__).parents[1] / "reference" / "official_state_dict_keys.json.gz").read_bytes()
    )
)
RESNETS = [
    "resnet34",
    "resnet34_an",
    "resnet50",
    "resnet50_an",
    "resnet50_se",
    "resnet50d",
    "resnet50d_an",
    "resnet101",
    "resnet101_an",
    "resnet101d",
    "resnet101d_an",
]
SMALL_RESNETS = [n for n in RESNETS if "101" not in n]


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("resnet50", {}, 25_557_032),
        ("resnet50_an", {}, 25_755_420),
        ("resnet50d", {}, 25_576_264),
        ("resnet50d_an", {}, 25_774_652),
        ("resnet101", {}, 44_549_160),
        ("resnet101_an", {}, 45_000_644),
        ("resnet101d", {}, 44_568_392),
        ("resnet101d_an", {}, 45_019_876),
    ],
)
def test_exact_parameter_counts(name: str, kwargs: dict, expected: int) -> None:
    assert num_params(create_model(name, **kwargs)) == expected


@pytest.mark.parametrize(
    ("name", "kwargs", "millions"),
    [
        ("resnet34", {}, 21.798),
        ("resnet34_an", {}, 21.996),
        ("resnet34_an", {"placement": "bn12"}, 22.194),
        ("resnet50_an", {"placement": "bn3"}, 26.349),
        ("resnet50_an", {"placement": "all"}, 26.947),
        ("resnet50_se", {"se_placement": "bn2"}, 26.186),
        ("resnet50_se", {}, 28.072),
        ("resnet50_se", {"se_placement": "bn123"}, 29.329),
    ],
)
def test_published_parameter_counts(name: str, kwargs: dict, millions: float) -> None:
    assert round(num_params(create_model(name, **kwargs)) / 1e6, 3) == millions


def _authors_state_dict(entry: dict) -> dict[str, torch.Tensor]:
    """Random tensors in the authors' layout (keys, order, shapes) of one entry of the keys file."""
    out = {}
    for key, shape in entry["state_dict"].items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape) + 0.5
        else:
            out[key] = torch.randn(shape)
    return out


@pytest.mark.parametrize(
    "name",
    [
        "resnet50",
        "resnet50_an",
        "resnet50d",
        "resnet50d_an",
        pytest.param("resnet101", marks=pytest.mark.slow),
        pytest.param("resnet101_an", marks=pytest.mark.slow),
        pytest.param("resnet101d", marks=pytest.mark.slow),
        pytest.param("resnet101d_an", marks=pytest.mark.slow),
    ],
)
def test_authors_state_dict_layout(name: str) -> None:
    entry = OFFICIAL_KEYS[name]
    model = create_model(name)
    assert num_params(model) == entry["num_params"]
    ours = to_official_key_names(model.state_dict())
    assert list(ours) == list(entry["state_dict"])
    assert {k: list(v.shape) for k, v in ours.items()} == entry["state_dict"]

    theirs = _authors_state_dict(entry)
    model.load_state_dict(dict(theirs), strict=True)
    loaded = to_official_key_names(model.state_dict())
    assert all(torch.equal(loaded[k], theirs[k]) for k in theirs)


def test_official_names_round_trip_on_other_placements() -> None:
    model = create_model("resnet50d_an", placement="all", num_mixtures=3)
    exported = to_official_key_names(model.state_dict())
    assert (
        "conv1.1.weight_" in exported
        and "layer2.0.downsample.2.attention_weights.attention.0.weight" in exported
    )
    twin = create_model("resnet50d_an", placement="all", num_mixtures=3)
    twin.load_state_dict(exported)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))


@pytest.mark.parametrize("name", SMALL_RESNETS)
def test_forward_backward_and_contract(name: str) -> None:
    model = create_model(name, num_classes=7)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing

    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, model.num_features, 2, 2)
        assert torch.allclose(model.forward_head(feats), model(x))
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(3)
    assert model.num_classes == 3 and model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


@pytest.mark.parametrize("name", SMALL_RESNETS)
def test_features_only(name: str) -> None:
    extractor = create_model(name, features_only=True)
    assert isinstance(extractor, FeatureExtractor)
    expected_chs = [64, 128, 256, 512] if name.startswith("resnet34") else [256, 512, 1024, 2048]
    assert extractor.out_channels == expected_chs
    assert extractor.reductions == [4, 8, 16, 32]
    extractor.eval()
    with torch.no_grad():
        feats = extractor(torch.randn(1, 3, 64, 64))
    assert [f.shape[1:] for f in feats] == [
        (c, 64 // r, 64 // r) for c, r in zip(expected_chs, [4, 8, 16, 32])
    ]
    assert isinstance(extractor.model.fc, nn.Identity)


def test_features_only_out_indices() -> None:
    extractor = create_model("resnet50_an", features_only=True, out_indices=(1, 2, 3))
    assert extractor.out_channels == [512, 1024, 2048]


def test_placements_put_an_where_asked() -> None:
    model = create_model("resnet50_an")
    block = model.layer3[2]
    assert isinstance(block.bn2, AttentiveBatchNorm2d) and block.bn2.num_mixtures == 20
    assert isinstance(block.bn1, nn.BatchNorm2d) and isinstance(block.bn3, nn.BatchNorm2d)
    assert model.layer1[0].bn2.num_mixtures == 10
    assert isinstance(model.bn1, nn.BatchNorm2d) and isinstance(model.layer2[0].downsample[1], nn.BatchNorm2d)

    every = create_model("resnet50d_an", placement="all", num_mixtures=(2, 3, 4, 5))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in every.modules())
    assert every.conv1[1].num_mixtures == 2 and every.bn1.num_mixtures == 2
    assert every.layer4[0].downsample[2].num_mixtures == 5

    basic = create_model("resnet34_an", placement="bn12")
    assert isinstance(basic.layer1[0].bn1, AttentiveBatchNorm2d)
    assert isinstance(basic.layer1[0].bn2, AttentiveBatchNorm2d)
    for bad in [{"placement": "bn3"}, {"placement": "bn21"}, {"se_placement": "all"}]:
        with pytest.raises(ValueError):
            create_model("resnet34", **bad)


def test_se_placement() -> None:
    model = create_model("resnet50_se", se_placement="bn123")
    block = model.layer2[1]
    assert block.se1.fc1.out_features == 128 // 4 and block.se2.fc1.out_features == 128 // 4
    assert block.se3.fc1.out_features == 512 // 16
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Linear) and m is not model.fc)


def test_init_zeroes_plain_bn3_and_keeps_an_init() -> None:
    model = create_model("resnet50_an")
    assert all(b.bn3.weight.abs().sum() == 0 for b in model.modules() if isinstance(b, Bottleneck))
    an = model.layer1[0].bn2
    assert 0.9 < an.mixture_weight.mean() < 1.1 and an.mixture_weight.std() > 0.05
    assert torch.equal(an.attention.norm.weight, torch.ones_like(an.attention.norm.weight))
    assert torch.equal(model.bn1.weight, torch.ones(64))
    conv = model.layer4[0].conv2
    assert abs(conv.weight.std().item() - (2 / (512 * 9)) ** 0.5) < 0.002

    an_bn3 = create_model("resnet50_an", placement="bn3")
    assert an_bn3.layer1[0].bn3.mixture_weight.abs().sum() > 0
    keep = create_model("resnet50", zero_init_residual=False)
    assert torch.equal(keep.layer1[0].bn3.weight, torch.ones(256))


def test_resnet_d_odd_input_and_registry() -> None:
    model = create_model("resnet50d_an", num_classes=5).eval()
    assert isinstance(model.layer2[0].downsample[0], nn.AvgPool2d)
    assert isinstance(model.layer1[0].downsample[0], nn.Conv2d)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 67, 67)).shape == (1, 5)
    assert set(RESNETS) <= set(list_models("resnet*"))
    assert isinstance(create_model("resnet34"), ResNet)
