"""The fast path of the AN layers (layers/fused.py) against the plain formulation: reference.py and the
layers' general (composite) route, to float64 precision, forward, every gradient and the running
statistics, in training and eval, NCHW and channels_last, every attention head and pooling."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from attentive_norm import ATTENTION_HEADS, POOLINGS, AttentiveBatchNorm2d, AttentiveGroupNorm
from attentive_norm.layers.fused import instance_affine, instance_moments
from attentive_norm.layers.reference import reference_attentive_batch_norm

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
TIGHT = {"rtol": 1e-10, "atol": 1e-11}


def _composite(layer: nn.Module, x: Tensor) -> Tensor:
    """The layer's general route: standardise, then mix (what TorchScript and SyncBN run)."""
    if isinstance(layer, AttentiveGroupNorm):
        return layer._mix(x, torch.group_norm(x, layer.num_groups, None, None, layer.eps))
    return layer._mix(x, layer._standardise(x))


def _randomise(layer: nn.Module) -> None:
    """Non-trivial running statistics and logit-norm affine."""
    with torch.no_grad():
        for name, buffer in layer.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_()
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
        norm = getattr(layer.attention, "norm", None)
        if norm is not None:
            norm.weight.normal_(1.0, 0.3)
            norm.bias.normal_(0.0, 0.3)


def _input(shape: tuple[int, ...], memory_format: torch.memory_format) -> Tensor:
    x = (torch.randn(*shape, dtype=torch.float64) * 1.5 + 0.7).to(memory_format=memory_format)
    return x.requires_grad_()


def _assert_fast_matches_composite(layer: nn.Module, x: Tensor, training: bool) -> None:
    fast, plain = layer.train(training), copy.deepcopy(layer).train(training)
    x_plain = x.detach().clone().requires_grad_()
    out, out_plain = fast(x), _composite(plain, x_plain)
    torch.testing.assert_close(out, out_plain, **TIGHT)
    assert out.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(
        memory_format=torch.channels_last
    )
    for (name, ours), (_, theirs) in zip(fast.named_buffers(), plain.named_buffers()):
        torch.testing.assert_close(ours, theirs, **TIGHT, msg=lambda m, name=name: f"{name}: {m}")
    grad = torch.randn_like(out)
    params = [p for p in fast.parameters()]
    params_plain = [p for p in plain.parameters()]
    grads = torch.autograd.grad(out, [x, *params], grad)
    grads_plain = torch.autograd.grad(out_plain, [x_plain, *params_plain], grad)
    names = ["input", *(name for name, _ in fast.named_parameters())]
    for name, ours, theirs in zip(names, grads, grads_plain):
        torch.testing.assert_close(ours, theirs, **TIGHT, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(("shape", "mixtures"), [((5, 8, 6, 7), 4), ((3, 16, 2, 2), 1), ((2, 12, 1, 5), 20)])
def test_batch_norm_fast_path_matches_reference(
    memory_format: str, training: bool, shape: tuple[int, ...], mixtures: int
) -> None:
    layer = AttentiveBatchNorm2d(shape[1], mixtures).double()
    if not training:
        _randomise(layer)
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
    x = _input(shape, FORMATS[memory_format])
    x_ref = x.detach().clone().contiguous().requires_grad_()

    # (1×1 maps: the reference's unbiased spatial variance is NaN, the layers define it as 0; those
    # shapes are compared with the composite route below.)
    out = layer.train(training)(x)
    out_ref = reference_attentive_batch_norm(x_ref, *ref_params, *stats, training)
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
    ours = (
        layer.running_mean,
        layer.running_var,
        layer.attention.norm.running_mean,
        layer.attention.norm.running_var,
    )
    for mine, theirs in zip(ours, stats):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out_ref)
    for mine, theirs in zip(
        torch.autograd.grad(out, [x, *params], grad), torch.autograd.grad(out_ref, [x_ref, *ref_params], grad)
    ):
        torch.testing.assert_close(mine, theirs, **TIGHT)


@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("head", ATTENTION_HEADS)
def test_fast_path_matches_composite_for_every_head(
    memory_format: str, training: bool, pooling: str, head: str
) -> None:
    layer = AttentiveBatchNorm2d(6, 3, attention=head, pooling=pooling).double()
    _randomise(layer)
    _assert_fast_matches_composite(layer, _input((4, 6, 3, 5), FORMATS[memory_format]), training)


@pytest.mark.filterwarnings("ignore:var_mean.*degrees of freedom")  # composite route, empty batch
@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"momentum": None, "attention_momentum": None},
        {"track_running_stats": False},
        {"eps": 1e-3, "pooling_eps": 0.1},
    ],
    ids=["cumulative", "no_running_stats", "eps"],
)
@pytest.mark.parametrize(
    "shape", [(4, 6, 3, 5), (2, 6, 24, 24), (1, 6, 4, 4), (3, 6, 1, 1), (1, 6, 1, 1), (0, 6, 2, 2)]
)
def test_fast_path_matches_composite_for_options_and_edge_shapes(
    memory_format: str, kwargs: dict, shape: tuple[int, ...]
) -> None:
    for training in (True, False):
        layer = AttentiveBatchNorm2d(6, 3, **kwargs).double()
        _randomise(layer)
        for _ in range(2):  # a second batch also exercises the updated statistics
            _assert_fast_matches_composite(layer, _input(shape, FORMATS[memory_format]), training)


def test_frozen_statistics_fast_path_matches_composite() -> None:
    layer = AttentiveBatchNorm2d(6, 3).double()
    _randomise(layer)
    layer.freeze_statistics()
    _assert_fast_matches_composite(layer, _input((4, 6, 3, 3), torch.contiguous_format), True)


@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize(("groups", "shape"), [(4, (3, 16, 5, 5)), (8, (2, 8, 1, 1)), (2, (1, 8, 3, 1))])
def test_group_norm_fast_path_matches_composite(
    memory_format: str, groups: int, shape: tuple[int, ...]
) -> None:
    layer = AttentiveGroupNorm(shape[1], num_groups=groups, num_mixtures=3).double()
    _assert_fast_matches_composite(layer, _input(shape, FORMATS[memory_format]), True)


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (2, 3, 24, 24)])  # 24x24: per-instance kernels
@pytest.mark.parametrize("memory_format", FORMATS)
def test_instance_moments_and_affine(memory_format: str, shape: tuple[int, ...]) -> None:
    x = _input(shape, FORMATS[memory_format])
    mean, var = instance_moments(x)
    var_ref, mean_ref = torch.var_mean(x, dim=(2, 3), correction=0)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(var, var_ref, rtol=1e-14, atol=1e-14)
    a = torch.randn(*shape[:2], dtype=torch.float64, requires_grad=True)
    b = torch.randn(*shape[:2], dtype=torch.float64, requires_grad=True)
    out = instance_affine(x, a, b)
    torch.testing.assert_close(out, a[:, :, None, None] * x + b[:, :, None, None], rtol=1e-14, atol=1e-14)
    assert out.is_contiguous(memory_format=FORMATS[memory_format])
    fast = x.numel() > 1000  # a random projection of the Jacobian instead of all of it
    assert torch.autograd.gradcheck(lambda x: instance_moments(x), (x,), fast_mode=fast)
    assert torch.autograd.gradcheck(instance_affine, (x, a, b), fast_mode=fast)


@pytest.mark.parametrize("offset", [0.0, 3.0, 8.0, 30.0, 1e3])
@pytest.mark.parametrize("memory_format", FORMATS)
def test_float32_moments_are_accurate_at_any_offset(offset: float, memory_format: str) -> None:
    """One pass where the cancellation is harmless, the centred two-pass formula elsewhere."""
    x = (torch.randn(3, 5, 9, 11) + offset).to(memory_format=FORMATS[memory_format])
    mean, var = instance_moments(x)
    expected_var, expected_mean = torch.var_mean(x.double(), dim=(2, 3), correction=0)
    torch.testing.assert_close(mean.double(), expected_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var.double(), expected_var, rtol=2e-5, atol=0)


def test_moments_are_accurate_far_from_zero() -> None:
    """Two-pass moments: no cancellation when |mean| >> std (a sum of squares would lose it all)."""
    x = torch.randn(2, 3, 16, 16) + 1000.0
    _, var = instance_moments(x)
    expected = x.double().var(dim=(2, 3), correction=0)
    torch.testing.assert_close(var.double(), expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (2, 3, 16, 20), (2, 3, 24, 24)])  # small and large maps
@pytest.mark.parametrize("memory_format", FORMATS)
def test_half_precision_input(memory_format: str, shape: tuple[int, ...]) -> None:
    x = (torch.randn(*shape) + 0.5).to(torch.bfloat16, memory_format=FORMATS[memory_format]).requires_grad_()
    mean, var = instance_moments(x)
    assert mean.dtype == var.dtype == torch.float32
    expected_var, expected_mean = torch.var_mean(x.detach().double(), dim=(2, 3), correction=0)
    torch.testing.assert_close(mean.double(), expected_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var.double(), expected_var, rtol=1e-5, atol=1e-6)
    a, b = torch.randn(*shape[:2], requires_grad=True), torch.randn(*shape[:2], requires_grad=True)
    out = instance_affine(x, a, b)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=FORMATS[memory_format])
    expected = a[:, :, None, None] * x.float() + b[:, :, None, None]
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)
    out.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and a.grad.dtype == b.grad.dtype == torch.float32


@pytest.mark.parametrize("shape", [(4, 6, 7, 7), (2, 4, 24, 24)])  # small maps; per-instance kernels
@pytest.mark.parametrize("memory_format", FORMATS)
def test_bfloat16_training_gradients_match_float64(memory_format: str, shape: tuple[int, ...]) -> None:
    """In bfloat16 every gradient stays within bfloat16 rounding of the float64 composite route on the
    same input (the fast path rounds only the small ``p * x`` factor of the input gradient)."""
    layer = AttentiveBatchNorm2d(shape[1], 3)
    _randomise(layer)
    x = _input(shape, FORMATS[memory_format]).detach().bfloat16().requires_grad_()
    x64 = x.detach().double().requires_grad_()
    plain = copy.deepcopy(layer).double()
    out, out64 = layer(x), _composite(plain, x64)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), out64, rtol=2e-2, atol=2e-2)
    grad = torch.randn(shape, dtype=torch.float64).to(memory_format=FORMATS[memory_format])
    grads = torch.autograd.grad(out, [x, *layer.parameters()], grad.bfloat16())
    grads64 = torch.autograd.grad(out64, [x64, *plain.parameters()], grad)
    assert grads[0].dtype == torch.bfloat16
    for ours, theirs in zip(grads, grads64):
        scale = theirs.abs().max().item()
        torch.testing.assert_close(ours.double(), theirs, rtol=3e-2, atol=2e-2 * scale)


@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("layer_type", ["bn", "gn"])
def test_backward_keeps_only_the_input(memory_format: str, layer_type: str) -> None:
    """Like BatchNorm, the layer keeps one full-size tensor for backward: its input (no xhat, no copy)."""
    layer = AttentiveBatchNorm2d(8, 3) if layer_type == "bn" else AttentiveGroupNorm(8, 4, 3)
    x = torch.randn(4, 8, 16, 16).to(memory_format=FORMATS[memory_format]).requires_grad_()
    saved: list[Tensor] = []

    def pack(t: Tensor) -> Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    full_size = [t for t in saved if t.numel() >= x.numel()]
    assert full_size, "the input must be saved"
    assert all(t.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for t in full_size)
    small = sum(t.numel() for t in saved if t.numel() < x.numel())
    assert small < x.numel() // 8  # N×C moments, parameters, N×K attention: independent of H×W


def test_output_can_be_modified_in_place() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), AttentiveBatchNorm2d(8, 3), nn.ReLU(inplace=True))
    x = torch.randn(2, 3, 7, 7, requires_grad=True)
    model(x).sum().backward()
    expected = x.grad.clone()
    x.grad = None
    model[2] = nn.ReLU()
    model(x).sum().backward()
    torch.testing.assert_close(x.grad, expected)


def test_attention_hooks_see_the_weights() -> None:
    layer = AttentiveBatchNorm2d(8, 3)
    captured: list[Tensor] = []
    layer.attention.register_forward_hook(lambda module, args, lam: captured.append(lam))
    x = torch.randn(4, 8, 5, 5)
    layer(x)
    assert len(captured) == 1 and captured[0].shape == (4, 3)
    torch.testing.assert_close(captured[0], layer.attention(x))


def test_fx_graph_keeps_the_fused_helpers_as_leaves() -> None:
    layer = AttentiveBatchNorm2d(8, 3)
    traced = torch.fx.symbolic_trace(layer)
    assert "instance_moments" in traced.code and "instance_affine" in traced.code
    x = torch.randn(4, 8, 5, 5)
    torch.testing.assert_close(traced(x), copy.deepcopy(layer)(x))


def test_synchronised_layer_takes_the_general_route_outside_distributed_jobs() -> None:
    layer = AttentiveBatchNorm2d(8, 3).double()
    synced = copy.deepcopy(layer)
    synced.process_group = object()  # set by convert_sync_norm; no process group is initialised here
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(synced(x), layer(x), **TIGHT)
    torch.testing.assert_close(synced.running_var, layer.running_var, **TIGHT)


@pytest.mark.parametrize("track_running_stats", [True, False])
def test_functorch_transforms_take_plain_ops(track_running_stats: bool) -> None:
    """torch.func.grad and vmap work (the fast path's autograd node is replaced by plain ops there)."""
    layer = AttentiveBatchNorm2d(4, 3, track_running_stats=track_running_stats).double()
    if track_running_stats:
        _randomise(layer)
        layer.eval()  # training would update captured buffers, which functorch forbids for any BatchNorm
    plain = copy.deepcopy(layer)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)

    def loss(params: dict[str, Tensor]) -> Tensor:
        return torch.func.functional_call(layer, params, (x,)).square().sum()

    grads = torch.func.grad(loss)(dict(layer.named_parameters()))
    _composite(plain, x).square().sum().backward()
    for name, parameter in plain.named_parameters():
        torch.testing.assert_close(grads[name], parameter.grad, **TIGHT, msg=name)
    if track_running_stats:
        batched = torch.func.vmap(lambda xi: layer(xi[None])[0])(x)
        torch.testing.assert_close(batched, _composite(plain, x), **TIGHT)
