"""DenseNet-121 and DenseNet-121-AN: exact counts, torchvision layout, AN placement, contract, gradients."""

import pytest
import torch
import torchvision
from torch import nn

from attentive_norm.layers import AttentiveBatchNorm2d
from attentive_norm.models import create_model
from attentive_norm.models.densenet import densenet121, densenet121_an
from attentive_norm.models.flops import count_params


def an_cost(channels: int, k: int) -> int:
    """The paper: parameters added by replacing one BN of ``channels`` with a K-component AN."""
    return 3 * k * channels - 2 * channels + 2 * k


def test_parameter_counts() -> None:
    assert count_params(densenet121()) == 7_978_856 == count_params(torchvision.models.densenet121())
    an = count_params(densenet121_an())
    assert an == 7_978_856 + (6 + 12) * an_cost(128, 10) + (24 + 16) * an_cost(128, 20) == 8_342_288
    assert round(an / 1e6, 3) == 8.342


def test_bn_model_is_torchvision_layout() -> None:
    ours, theirs = densenet121(num_classes=10).eval(), torchvision.models.densenet121(num_classes=10).eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in theirs.state_dict().items()
    ]
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(ours(x), theirs(x))


def test_an_only_at_norm2_with_k_per_block() -> None:
    model = densenet121_an()
    ans = {name: m for name, m in model.named_modules() if isinstance(m, AttentiveBatchNorm2d)}
    assert all(name.endswith(".norm2") and m.num_features == 128 for name, m in ans.items())
    per_block = {b: [m.num_mixtures for n, m in ans.items() if f"denseblock{b}." in n] for b in range(1, 5)}
    assert per_block == {1: [10] * 6, 2: [10] * 12, 3: [20] * 24, 4: [20] * 16}
    # Everything else stays BN: stem, each layer's norm1, three transitions, norm5.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 1 + 58 + 3 + 1


def test_forward_backward_every_parameter_gets_a_gradient() -> None:
    model = densenet121_an(num_classes=3, num_mixtures=(2, 2, 3, 3)).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3)
    out.logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_contract_and_features_only() -> None:
    model = densenet121_an(num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (1, 1024, 2, 2) and feats.min() >= 0
    torch.testing.assert_close(model(x), model.forward_head(feats))
    assert model.forward_head(feats, pre_logits=True).shape == (1, model.num_features)
    model.reset_classifier(0)
    assert model(x).shape == (1, 1024) and model.num_classes == 0

    extractor = create_model("densenet121_an", features_only=True).eval()
    assert extractor.out_channels == [256, 512, 1024, 1024] and extractor.reductions == [4, 8, 16, 32]
    maps = extractor(x)
    for f, r, c in zip(maps, extractor.reductions, extractor.out_channels, strict=True):
        assert f.shape == (1, c, 64 // r, 64 // r)
    torch.testing.assert_close(maps[-1], extractor.model.forward_features(x))


def test_bad_num_mixtures() -> None:
    with pytest.raises(ValueError, match="one K per dense block"):
        densenet121_an(num_mixtures=(10, 20))
