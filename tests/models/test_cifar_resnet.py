"""CIFAR ResNet-20/56 with and without AN: counts, placements, input sizes, contract, gradients."""

import pytest
import torch
from torch import nn

from attentive_norm.layers import AttentiveBatchNorm2d
from attentive_norm.models import create_model
from attentive_norm.models.cifar_resnet import CifarResNet, resnet20, resnet20_an, resnet56, resnet56_an
from attentive_norm.models.flops import count_params


def an_cost(channels: int, k: int) -> int:
    """The paper: parameters added by replacing one BN of ``channels`` with a K-component AN."""
    return 3 * k * channels - 2 * channels + 2 * k


def stage_costs(n: int, slots: int) -> int:
    return n * slots * (an_cost(16, 5) + an_cost(32, 5) + an_cost(64, 10))


def test_parameter_counts() -> None:
    # He et al. 2016, Table 6 (option A shortcuts): 0.27M and 0.85M.
    assert count_params(resnet20(num_classes=10)) == 269_722
    assert count_params(resnet56(num_classes=10)) == 853_018
    assert count_params(resnet20_an(num_classes=10)) == 269_722 + stage_costs(3, 1) == 277_090
    assert count_params(resnet56_an(num_classes=10)) == 853_018 + stage_costs(9, 1)
    assert count_params(resnet20_an(num_classes=10, placement="bn12")) == 269_722 + stage_costs(3, 2)


@pytest.mark.parametrize(("placement", "slots"), [("bn1", ("bn1",)), ("bn12", ("bn1", "bn2"))])
def test_placement(placement: str, slots: tuple[str, ...]) -> None:
    model = resnet20_an(placement=placement)
    ans = {name: m.num_mixtures for name, m in model.named_modules() if isinstance(m, AttentiveBatchNorm2d)}
    expected = {
        f"layer{s + 1}.{b}.{slot}": k for s, k in enumerate((5, 5, 10)) for b in range(3) for slot in slots
    }
    assert ans == expected
    assert isinstance(model.bn1, nn.BatchNorm2d)
    assert not any(isinstance(m, AttentiveBatchNorm2d) for m in resnet20().modules())


@pytest.mark.parametrize(("in_chans", "size"), [(1, 8), (1, 7), (3, 32), (3, 1)])
def test_any_input_size(in_chans: int, size: int) -> None:
    model = resnet20_an(num_classes=10, in_chans=in_chans).eval()
    assert model(torch.randn(2, in_chans, size, size)).shape == (2, 10)


def test_forward_backward_every_parameter_gets_a_gradient() -> None:
    model = resnet20_an(num_classes=10, placement="bn12").train()
    out = model(torch.randn(4, 3, 16, 16))
    out.logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_contract_and_features_only() -> None:
    model = resnet56_an(num_classes=10).eval()
    x = torch.randn(2, 3, 16, 16)
    feats = model.forward_features(x)
    torch.testing.assert_close(model(x), model.forward_head(feats))
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features) == (2, 64)
    model.reset_classifier(0)
    assert model(x).shape == (2, 64)

    extractor = create_model("resnet20_an", num_classes=10, features_only=True).eval()
    assert extractor.out_channels == [16, 32, 64] and extractor.reductions == [1, 2, 4]
    assert [tuple(f.shape) for f in extractor(x)] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4)]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="6n"):
        CifarResNet(depth=21)
    with pytest.raises(ValueError, match="placement"):
        resnet20_an(placement="bn3")
    with pytest.raises(ValueError, match="one K per stage"):
        resnet20_an(num_mixtures=(5, 5))
