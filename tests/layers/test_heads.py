"""Every attention head and pooling: shapes, value ranges, gradients reaching every parameter, gradcheck."""

from __future__ import annotations

import pytest
import torch

from attentive_norm import ATTENTION_HEADS, POOLINGS, AttentiveBatchNorm2d
from attentive_norm.layers.attention import AttentionHead, spatial_descriptor

CHANNELS, MIXTURES = 6, 4


def _randomise_logit_stats(head: AttentionHead) -> None:
    if head.norm is not None:
        with torch.no_grad():
            head.norm.running_mean.normal_()
            head.norm.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("head_name", ATTENTION_HEADS)
def test_head_shapes_ranges_and_gradients(head_name: str, pooling: str) -> None:
    head = AttentionHead(CHANNELS, MIXTURES, head=head_name, pooling=pooling)
    in_features = 2 * MIXTURES if head_name == "mlp_hsigmoid" else CHANNELS
    assert head.weight.shape == (MIXTURES, in_features)
    x = torch.randn(5, CHANNELS, 4, 3, requires_grad=True)
    for training in (True, False):
        lam = head.train(training)(x)
        assert lam.shape == (5, MIXTURES)
        assert lam.dtype == torch.float32
        assert bool(((lam >= 0) & (lam <= 1)).all())
        if head_name.endswith("softmax"):
            torch.testing.assert_close(lam.sum(dim=1), torch.ones(5))
    head.train()
    head.zero_grad()
    (head(x) * torch.randn(5, MIXTURES)).sum().backward()
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0), name


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("head_name", ATTENTION_HEADS)
def test_layer_with_each_head_trains(head_name: str, pooling: str) -> None:
    layer = AttentiveBatchNorm2d(CHANNELS, MIXTURES, attention=head_name, pooling=pooling)
    x = torch.randn(4, CHANNELS, 5, 5, requires_grad=True)
    out = layer(x)
    assert out.shape == x.shape
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0), name
    assert layer.eval()(x).shape == x.shape


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("head_name", ATTENTION_HEADS)
def test_head_gradcheck(head_name: str, pooling: str, training: bool) -> None:
    head = AttentionHead(3, 2, head=head_name, pooling=pooling).double().train(training)
    _randomise_logit_stats(head)
    names = [name for name, _ in head.named_parameters()]
    x = torch.randn(4, 3, 3, 2, dtype=torch.float64, requires_grad=True)

    def run(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(head, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(run, (x, *head.parameters()), fast_mode=True)


def test_descriptors_follow_the_formulas() -> None:
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(spatial_descriptor(x, "mean"), x.mean(dim=(2, 3)))
    expected = x.mean(dim=(2, 3)) / torch.sqrt(x.var(dim=(2, 3), unbiased=True) + 1e-3)
    torch.testing.assert_close(spatial_descriptor(x, "mean_rsqrt_var", 1e-3), expected)
    assert spatial_descriptor(x.half(), "mean").dtype == torch.float32


def test_descriptor_rejects_unknown_pooling() -> None:
    with pytest.raises(ValueError, match="unknown pooling 'max'; expected 'mean_rsqrt_var' or 'mean'"):
        spatial_descriptor(torch.randn(1, 2, 3, 3), "max")


@pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")
@pytest.mark.parametrize("head_name", ATTENTION_HEADS)
def test_every_head_scripts_and_traces(head_name: str) -> None:
    layer = AttentiveBatchNorm2d(CHANNELS, MIXTURES, attention=head_name, track_running_stats=False)
    x = torch.randn(3, CHANNELS, 4, 4)
    expected = layer(x)
    torch.testing.assert_close(torch.jit.script(layer)(x), expected)
    torch.testing.assert_close(torch.fx.symbolic_trace(layer)(x), expected)
