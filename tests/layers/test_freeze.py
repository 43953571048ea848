"""freeze_norm: frozen statistics ("norm_eval") or fully frozen norms, surviving model.train()."""

import copy

import pytest
import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.ops import FrozenBatchNorm2d

from attentive_norm import AttentiveBatchNorm2d, AttentiveGroupNorm, convert_norm, freeze_norm
from attentive_norm.layers import FrozenStatsBatchNorm2d


def _trained_an_resnet() -> nn.Module:
    """resnet18 with AN at bn2, after a few training steps so every statistic is non-trivial."""
    model = convert_norm(resnet18(num_classes=4), include="*.bn2", num_mixtures=3).train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, 32, 32))
    return model


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in model.named_buffers()}


@pytest.mark.parametrize("mode", ["stats", "all"])
def test_frozen_model_keeps_its_statistics_and_eval_function_through_train(mode: str) -> None:
    model = _trained_an_resnet().eval()
    x = torch.randn(4, 3, 32, 32)
    expected = model(x)

    freeze_norm(model, mode)
    model.train()  # what detection training loops do every epoch
    before = _buffers(model)
    out = model(x)

    torch.testing.assert_close(out, expected)  # training forward = the eval function
    assert all(torch.equal(b, before[name]) for name, b in model.named_buffers())
    plain_type = FrozenStatsBatchNorm2d if mode == "stats" else FrozenBatchNorm2d
    assert type(model.bn1) is plain_type and type(model.layer1[0].bn1) is plain_type
    assert isinstance(model.layer1[0].bn2, AttentiveBatchNorm2d)


def test_stats_mode_keeps_parameters_training() -> None:
    model = freeze_norm(_trained_an_resnet(), "stats").train()
    model(torch.randn(4, 3, 32, 32)).sum().backward()

    an = model.layer2[1].bn2
    bn = model.layer2[1].bn1
    for parameter in (an.mixture_weight, an.mixture_bias, an.attention.weight, an.attention.norm.weight):
        assert parameter.requires_grad and parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert bn.weight.grad is not None and bn.bias.grad is not None


def test_all_mode_freezes_attentive_parameters() -> None:
    model = freeze_norm(_trained_an_resnet(), "all")
    for module in model.modules():
        if isinstance(module, AttentiveBatchNorm2d):
            assert not any(p.requires_grad for p in module.parameters())
    assert model.conv1.weight.requires_grad and model.fc.weight.requires_grad


def test_include_limits_freezing_and_stats_then_all_composes() -> None:
    model = freeze_norm(_trained_an_resnet(), "stats", include="layer4.*")
    assert type(model.layer4[0].bn1) is FrozenStatsBatchNorm2d and model.layer4[0].bn2.freeze_stats
    assert type(model.layer3[0].bn1) is nn.BatchNorm2d and not model.layer3[0].bn2.freeze_stats

    stats_frozen = model.layer4[0].bn1
    freeze_norm(model, "all", include="layer4.*")
    frozen = model.layer4[0].bn1
    assert type(frozen) is FrozenBatchNorm2d
    assert torch.equal(frozen.running_var, stats_frozen.running_var)
    assert torch.equal(frozen.weight, stats_frozen.weight.detach())


def test_group_norm_variant_is_frozen_in_all_mode() -> None:
    model = freeze_norm(nn.Sequential(AttentiveGroupNorm(8, 4, 3)), "all")
    assert not any(p.requires_grad for p in model.parameters())


def test_frozen_stats_batch_norm_has_batch_norm_state_dict() -> None:
    bn = nn.BatchNorm2d(5, affine=False).eval()
    with torch.no_grad():
        bn.running_mean.normal_()
    frozen = FrozenStatsBatchNorm2d.from_batch_norm(bn)
    x = torch.randn(2, 5, 3, 3)
    torch.testing.assert_close(frozen.train()(x), bn(x))
    assert not frozen.weight.requires_grad  # a non-affine BatchNorm stays non-affine in effect

    assert frozen.state_dict().keys() == nn.BatchNorm2d(5).state_dict().keys()
    FrozenStatsBatchNorm2d(5).load_state_dict(nn.BatchNorm2d(5).state_dict())


def test_freeze_norm_errors() -> None:
    with pytest.raises(ValueError, match="mode"):
        freeze_norm(resnet18(), "everything")
    with pytest.raises(ValueError, match="no norm layer"):
        freeze_norm(resnet18(), include="head.*")
    with pytest.raises(ValueError, match="running statistics"):
        freeze_norm(nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False)))


def test_root_batch_norm_is_returned_frozen() -> None:
    bn = nn.BatchNorm2d(3)
    assert type(freeze_norm(copy.deepcopy(bn))) is FrozenStatsBatchNorm2d
    assert type(freeze_norm(bn, "all")) is FrozenBatchNorm2d
