"""get_norm_layer / NORM_LAYERS: names to constructors that take the channel count first."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import attentive_norm
from attentive_norm import NORM_LAYERS, AttentiveBatchNorm2d, AttentiveGroupNorm, get_norm_layer
from attentive_norm.layers import ChannelFirstGroupNorm


@pytest.mark.parametrize("name", sorted(NORM_LAYERS))
def test_every_registered_name_builds_a_working_layer(name: str) -> None:
    layer = get_norm_layer(name)(64)
    assert isinstance(layer, NORM_LAYERS[name])
    x = torch.randn(2, 64, 4, 4)
    assert layer(x).shape == x.shape


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("batchnorm", nn.BatchNorm2d),
        ("frozen_batchnorm", FrozenBatchNorm2d),
        ("groupnorm", nn.GroupNorm),
        ("an", AttentiveBatchNorm2d),
        ("attentive_batchnorm", AttentiveBatchNorm2d),
        ("an_gn", AttentiveGroupNorm),
        ("attentive_groupnorm", AttentiveGroupNorm),
        ("  AN ", AttentiveBatchNorm2d),
    ],
)
def test_names_map_to_the_expected_layers(name: str, expected: type[nn.Module]) -> None:
    assert isinstance(get_norm_layer(name)(32), expected)


def test_defaults_apply_and_can_be_overridden_per_layer() -> None:
    norm = get_norm_layer("an", num_mixtures=20, momentum=0.01)
    layer = norm(128)
    assert (layer.num_features, layer.num_mixtures, layer.momentum) == (128, 20, 0.01)
    assert norm(64, num_mixtures=5).num_mixtures == 5

    group = get_norm_layer("an_gn", num_groups=16)(64)
    assert (group.num_channels, group.num_groups, group.num_mixtures) == (64, 16, 10)


def test_group_norm_takes_the_channel_count_first() -> None:
    layer = get_norm_layer("groupnorm")(64)
    assert (layer.num_channels, layer.num_groups) == (64, 32)
    assert isinstance(get_norm_layer(nn.GroupNorm, num_groups=8)(64), ChannelFirstGroupNorm)


def test_classes_and_callables_are_accepted() -> None:
    layer = get_norm_layer(AttentiveBatchNorm2d, num_mixtures=3)(16)
    assert isinstance(layer, AttentiveBatchNorm2d) and layer.num_mixtures == 3
    assert isinstance(get_norm_layer(nn.BatchNorm2d, eps=1e-3)(16), nn.BatchNorm2d)


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown norm layer 'layernorm'; expected one of an, an_gn, "):
        get_norm_layer("layernorm")
    with pytest.raises(ValueError, match=r"expects a name .* or a class, got 3"):
        get_norm_layer(3)  # type: ignore[arg-type]


def test_unknown_keyword_is_refused_at_once() -> None:
    with pytest.raises(TypeError, match=r"AttentiveBatchNorm2d\(num_features.*'groups'"):
        get_norm_layer("an", groups=4)


def test_exported_from_the_package() -> None:
    assert attentive_norm.get_norm_layer is get_norm_layer
    assert attentive_norm.NORM_LAYERS is NORM_LAYERS
    assert {"get_norm_layer", "NORM_LAYERS"} <= set(attentive_norm.__all__)
