"""AN layers agree with the plain re-statement of the formula (reference.py) to float64 precision."""

import pytest
import torch

from attentive_norm import AttentiveBatchNorm2d, AttentiveGroupNorm
from attentive_norm.layers.reference import reference_attentive_batch_norm, reference_attentive_group_norm


def _randomise_running_stats(layer: AttentiveBatchNorm2d) -> None:
    with torch.no_grad():
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2.0)
        layer.attention.norm.running_mean.normal_()
        layer.attention.norm.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(5, 8, 6, 7), (2, 3, 1, 4), (3, 16, 2, 2)])
def test_batch_norm_variant_matches_reference(training: bool, shape: tuple[int, ...]) -> None:
    channels = shape[1]
    layer = AttentiveBatchNorm2d(channels, 4).double().train(training)
    if not training:
        _randomise_running_stats(layer)
    stats = [
        t.clone()
        for t in (
            layer.running_mean,
            layer.running_var,
            layer.attention.norm.running_mean,
            layer.attention.norm.running_var,
        )
    ]
    params = [
        layer.mixture_weight,
        layer.mixture_bias,
        layer.attention.weight,
        layer.attention.norm.weight,
        layer.attention.norm.bias,
    ]
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()

    out = layer(x)
    out_ref = reference_attentive_batch_norm(x_ref, *ref_params, *stats, training)
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)

    # Running statistics of the main and the logit BatchNorm were updated identically.
    for ours, theirs in zip(
        (
            layer.running_mean,
            layer.running_var,
            layer.attention.norm.running_mean,
            layer.attention.norm.running_var,
        ),
        stats,
    ):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    if training:
        assert int(layer.num_batches_tracked) == 1
        assert int(layer.attention.norm.num_batches_tracked) == 1

    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *params], grad_out)
    grads_ref = torch.autograd.grad(out_ref, [x_ref, *ref_params], grad_out)
    for ours, theirs in zip(grads, grads_ref):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-11)


def test_group_norm_variant_matches_reference() -> None:
    layer = AttentiveGroupNorm(16, num_groups=4, num_mixtures=3).double()
    x = torch.randn(3, 16, 5, 5, dtype=torch.float64, requires_grad=True)
    params = [layer.mixture_weight, layer.mixture_bias, layer.attention.weight, layer.attention.bias]
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    x_ref = x.detach().clone().requires_grad_()
    out = layer(x)
    out_ref = reference_attentive_group_norm(x_ref, 4, *ref_params)
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(out)
    for ours, theirs in zip(
        torch.autograd.grad(out, [x, *params], grad_out),
        torch.autograd.grad(out_ref, [x_ref, *ref_params], grad_out),
    ):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-11)
    # GN-based AN has no running statistics: train and eval agree.
    torch.testing.assert_close(layer.eval()(x), out)
