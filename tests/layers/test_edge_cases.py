"""The documented behaviour of the AN layers at the edges (see the AttentiveBatchNorm2d docstring), and
clear errors for bad arguments and inputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from attentive_norm import AttentiveBatchNorm2d, AttentiveGroupNorm
from attentive_norm.layers.attention import AttentionHead


def _state(layer: nn.Module) -> dict[str, Tensor]:
    return {name: value.clone() for name, value in layer.state_dict().items()}


def _assert_finite_with_finite_grads(layer: nn.Module, x: Tensor) -> Tensor:
    x = x.detach().requires_grad_()
    out = layer(x)
    assert bool(torch.isfinite(out).all())
    out.sum().backward()
    assert bool(torch.isfinite(x.grad).all())
    for name, parameter in layer.named_parameters():
        assert parameter.grad is None or bool(torch.isfinite(parameter.grad).all()), name
    return out


def _trained_layer(**kwargs: object) -> AttentiveBatchNorm2d:
    """A layer whose running statistics have moved away from their initial values."""
    layer = AttentiveBatchNorm2d(8, 3, **kwargs)
    for _ in range(3):
        layer(torch.randn(6, 8, 4, 4) * 2 + 1)
    return layer


def test_training_batch_of_one_updates_main_stats_but_not_logit_stats() -> None:
    layer = _trained_layer()
    before = _state(layer)
    x = torch.randn(1, 8, 5, 5)
    _assert_finite_with_finite_grads(layer, x)
    assert int(layer.num_batches_tracked) == int(before["num_batches_tracked"]) + 1
    assert not torch.equal(layer.running_mean, before["running_mean"])
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(layer.attention.norm, name), before[f"attention.norm.{name}"])
    # The standardisation used the one instance's own statistics, as nn.BatchNorm2d does.
    xhat = nn.functional.batch_norm(x, None, None, training=True)
    lam = layer.attention(x)
    gamma, beta = lam @ layer.mixture_weight, lam @ layer.mixture_bias
    torch.testing.assert_close(layer(x), gamma[:, :, None, None] * xhat + beta[:, :, None, None])


def test_one_by_one_maps_train_with_batch_statistics() -> None:
    layer = _trained_layer()
    x = torch.randn(4, 8, 1, 1)
    out = _assert_finite_with_finite_grads(layer, x)
    assert out.shape == x.shape
    assert int(layer.attention.norm.num_batches_tracked) == 4


@pytest.mark.parametrize("batch", [1, 0])
def test_at_most_one_value_per_channel_falls_back_to_running_stats(batch: int) -> None:
    layer = _trained_layer()
    before = _state(layer)
    x = torch.randn(batch, 8, 1, 1) * 3
    out = _assert_finite_with_finite_grads(layer.train(), x)
    assert out.shape == x.shape
    for name, value in layer.state_dict().items():
        torch.testing.assert_close(value, before[name], msg=f"{name} changed")
    torch.testing.assert_close(out, layer.eval()(x))


def test_without_running_stats_uses_batch_stats_in_train_and_eval() -> None:
    layer = AttentiveBatchNorm2d(8, 3, track_running_stats=False)
    assert not any("running" in name or "num_batches" in name for name in layer.state_dict())
    x = torch.randn(4, 8, 3, 3)
    torch.testing.assert_close(layer.train()(x), layer.eval()(x))
    # A single value per channel standardises to 0; a single instance gets the logit BN's bias.
    single = torch.randn(1, 8, 1, 1)
    out = _assert_finite_with_finite_grads(layer.train(), single)
    lam = nn.functional.hardsigmoid(layer.attention.norm.bias.detach())
    torch.testing.assert_close(out, (lam @ layer.mixture_bias)[None, :, None, None].detach())


def test_momentum_none_is_a_cumulative_average() -> None:
    layer = AttentiveBatchNorm2d(8, 3, momentum=None, attention_momentum=None)
    plain = nn.BatchNorm2d(8, momentum=None, affine=False)
    logits: list[Tensor] = []
    layer.attention.norm.register_forward_hook(lambda module, args, out: logits.append(args[0].detach()))
    for _ in range(3):
        x = torch.randn(5, 8, 3, 3) * 2 + 1
        layer(x)
        plain(x)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(layer, name), getattr(plain, name))
    torch.testing.assert_close(
        layer.attention.norm.running_mean, torch.stack([z.mean(dim=0) for z in logits]).mean(dim=0)
    )
    torch.testing.assert_close(
        layer.attention.norm.running_var, torch.stack([z.var(dim=0) for z in logits]).mean(dim=0)
    )


@pytest.mark.parametrize("training", [True, False])
def test_constant_input_gives_the_mixture_bias(training: bool) -> None:
    layer = _trained_layer().train(training)
    x = torch.full((3, 8, 4, 4), 2.5)
    out = _assert_finite_with_finite_grads(layer, x)
    if training:
        lam = layer.attention(x)
        expected = (lam @ layer.mixture_bias)[:, :, None, None].expand_as(out)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-3)


@pytest.mark.parametrize("layer_name", ["bn", "gn"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("scale", [1e4, 1e-4])
def test_extreme_magnitudes_stay_finite(layer_name: str, training: bool, scale: float) -> None:
    layer = _trained_layer() if layer_name == "bn" else AttentiveGroupNorm(8, 4, 3)
    layer.train(training)
    x = torch.randn(4, 8, 5, 5)
    out = _assert_finite_with_finite_grads(layer, x * scale)
    if scale > 1 and (training or layer_name == "gn"):
        # Batch statistics (or GN) and the pooling make large inputs scale invariant.
        torch.testing.assert_close(out, layer(x), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("batch", [1, 0])
def test_group_norm_variant_handles_tiny_batches(batch: int) -> None:
    layer = AttentiveGroupNorm(8, num_groups=8, num_mixtures=3)
    x = torch.randn(batch, 8, 1, 1)
    out = _assert_finite_with_finite_grads(layer, x)
    assert out.shape == x.shape
    if batch:
        lam = layer.attention(x)
        torch.testing.assert_close(out, (lam @ layer.mixture_bias)[:, :, None, None])


# Bad arguments and inputs: a ValueError that names the problem and the expected value.


@pytest.mark.parametrize("layer", [AttentiveBatchNorm2d(8, 3), AttentiveGroupNorm(8, 4, 3)])
@pytest.mark.parametrize("shape", [(2, 8, 5), (2, 8, 5, 5, 5), (8,)])
def test_non_4d_input_is_refused(layer: nn.Module, shape: tuple[int, ...]) -> None:
    name = type(layer).__name__
    with pytest.raises(ValueError, match=rf"{name} expects a 4D input \(N, C, H, W\), got a {len(shape)}D"):
        layer(torch.randn(shape))


@pytest.mark.parametrize("layer", [AttentiveBatchNorm2d(8, 3), AttentiveGroupNorm(8, 4, 3)])
def test_wrong_channel_count_is_refused(layer: nn.Module) -> None:
    with pytest.raises(
        ValueError, match=r"built for 8 channels, got an input with 6 channels \(shape \[2, 6"
    ):
        layer(torch.randn(2, 6, 3, 3))


@pytest.mark.parametrize("mixtures", [0, -1, 2.0, True])
def test_num_mixtures_must_be_a_positive_int(mixtures: object) -> None:
    message = rf"num_mixtures must be an int >= 1, got {mixtures!r}"
    with pytest.raises(ValueError, match=message):
        AttentiveBatchNorm2d(8, mixtures)
    with pytest.raises(ValueError, match=message):
        AttentiveGroupNorm(8, 4, mixtures)
    with pytest.raises(ValueError, match=message):
        AttentionHead(8, mixtures)


def test_num_channels_must_be_a_positive_int() -> None:
    with pytest.raises(ValueError, match="num_channels must be an int >= 1, got 0"):
        AttentiveBatchNorm2d(0)


def test_num_groups_must_divide_channels() -> None:
    with pytest.raises(ValueError, match=r"num_groups=32 must divide num_channels=48 .*\[1, 2, 3, 4, 6, 8"):
        AttentiveGroupNorm(48, num_groups=32)
    with pytest.raises(ValueError, match="num_groups must be an int >= 1, got 0"):
        AttentiveGroupNorm(48, num_groups=0)


@pytest.mark.parametrize("layer_class", [AttentiveBatchNorm2d, AttentiveGroupNorm])
def test_unknown_head_and_pooling_names_list_the_valid_ones(layer_class: type[nn.Module]) -> None:
    with pytest.raises(ValueError, match="unknown attention head 'se'; expected one of conv_bn_hsigmoid, "):
        layer_class(32, attention="se")
    with pytest.raises(ValueError, match="unknown pooling 'max'; expected one of mean_rsqrt_var, mean"):
        layer_class(32, pooling="max")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["bn", "gn"])
def test_a_layer_cast_to_half_precision_trains_and_evaluates(dtype: torch.dtype, kind: str) -> None:
    # As nn.BatchNorm2d(...).half() does on the CPU: the float32 attention logits meet the logit
    # BatchNorm's half-precision statistics (that raised "mixed dtype" before).
    torch.manual_seed(0)
    reference = AttentiveBatchNorm2d(16, 4) if kind == "bn" else AttentiveGroupNorm(16, 4)
    layer = copy.deepcopy(reference).to(dtype)
    x = torch.randn(3, 16, 6, 6)
    for training in (True, False):
        reference.train(training)
        layer.train(training)
        low = x.to(dtype).requires_grad_()
        out = layer(low)
        assert out.dtype == dtype and bool(torch.isfinite(out).all())
        out.float().sum().backward()
        assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in layer.parameters())
        torch.testing.assert_close(out.float(), reference(x), atol=0.1, rtol=0.05)
        with torch.no_grad():  # the native inference route in eval
            torch.testing.assert_close(layer(low).float(), out.float(), atol=0.07, rtol=0.02)
