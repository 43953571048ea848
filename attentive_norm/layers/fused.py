"""The fast path of the AN layers: the statistics in one reading pass, the output in one pass.

An AN layer's output is a per-instance, per-channel affine map of its input,
``out = a[n, c] * x + b[n, c]``, whatever the standardisation (BatchNorm or GroupNorm) and the
attention head, because everything they need comes from the per-instance moments of ``x``:

- ``m[n, c], v[n, c]``: the mean and biased variance of ``x[n, c]`` over H×W (:func:`instance_moments`);
- BatchNorm statistics: ``mean_c = mean_n(m)``, ``var_c = mean_n(v) + mean_n((m - mean_c)^2)`` (the law
  of total variance); GroupNorm ones likewise over the channels of a group;
- the attention pooling ``m * rsqrt(v * HW / (HW - 1) + eps)``;
- then ``a = (lam @ Gamma) * rstd`` and ``b = (lam @ Beta) - mean * a``; in eval the running statistics
  fold into ``a`` and ``b`` the same way.

Only the full-size work is special; the N×C and N×K maths in between is ordinary autograd.

- Forward: the per-instance sum and sum of squares in reading passes without a full-size temporary
  (where ``E[x^2] - m^2`` would lose precision to cancellation, see ``ONE_PASS_CONDITION``, a centred
  two-pass formula instead, as accurate as ``torch.var_mean``, which on the CPU is an order of
  magnitude slower); then the affine map in one pass.
- Backward (eager training, :func:`fused_instance_affine`: one autograd node per layer): one reading
  pass for ``sum_hw(g * x)`` and ``sum_hw(g)``, the N×C graph differentiated with
  ``torch.autograd.grad``, then ``grad_x = a * g + q + p * x`` written once, in two passes. Saved for
  backward: ``x`` (BatchNorm saves its input too) and N×C tensors, so an AN layer holds no more
  activation memory than a BatchNorm.
- Inference: the same forward without autograd bookkeeping (on the CPU the layers first try the
  native kernel of ``native.py``, which does all of it in one call).
- ``torch.compile``: plain ops (``var_mean``, ``addcmul``), which inductor fuses and differentiates.
- ``torch.fx.symbolic_trace``: the steps as graph leaves (:func:`instance_moments`, the N×C functions,
  :func:`instance_affine`, each a custom autograd function saving only ``x``).

The kernels: for NCHW-contiguous input the elementwise passes run PyTorch's native eval-mode
``batch_norm`` kernel on the view ``x.view(1, N*C, H, W)`` (running mean 0, running variance 1, eps 0,
weight ``a``, bias ``b``), a vectorised pass that computes half-precision input in float32 and writes the
input's dtype; the reductions run its backward kernel (with ``g`` and ``x`` as gradient and input it
returns ``sum_hw(g * x)`` and ``sum_hw(g)`` per instance and channel, accumulated in float32). For
channels_last the backward kernel runs per instance on large maps; on smaller ones the products are
written into the layer's output tensor (allocated first, overwritten last, so no extra allocation) and
summed as N×(H·W)×C rows; elementwise passes use ``addcmul``, which keeps the memory format.

The statistics are float32 for half-precision input, the input's dtype otherwise; the output has the
input's dtype and memory format. ``reference.py`` is the plain formulation this path is tested
against (tests/layers/test_fused.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from .stats import statistics_dtype, update_running_stats, values_per_channel

__all__ = [
    "batch_norm_statistics",
    "fused_instance_affine",
    "group_norm_statistics",
    "instance_affine",
    "instance_moments",
    "pooled_descriptor",
]


def _spatial_size(x: Tensor) -> int:
    return x.shape[2] * x.shape[3]


def _per_instance_view(x: Tensor) -> Tensor | None:
    """``x`` (N×C×H×W) as a 1×(N·C)×H×W view when its layout allows it (NCHW-contiguous), else None."""
    if not x.is_contiguous():
        return None
    return x.view(1, x.shape[0] * x.shape[1], x.shape[2], x.shape[3])


def _unit_statistics(size: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Running mean 0 and running variance 1 for the eval-mode batch_norm kernels used as an affine map
    and as per-instance reductions."""
    return torch.zeros(size, dtype=dtype, device=device), torch.ones(size, dtype=dtype, device=device)


def _is_channels_last(x: Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _channels_last_scratch(x: Tensor) -> Tensor | None:
    """A new tensor like ``x`` for a channels_last ``x`` (else None): the layer's output, first used as
    scratch space for the reductions' products (see :func:`_per_instance_sums`)."""
    return torch.empty_like(x) if _is_channels_last(x) else None


def _rows(x: Tensor) -> Tensor:
    """A channels_last N×C×H×W tensor as the N×(H·W)×C array it is in memory (a view)."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).view(n, h * w, c)


def _affine(x: Tensor, a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """``a[:, :, None, None] * x + b[:, :, None, None]`` in one pass, computed in ``a``'s dtype (float32 or
    wider) and written in ``x``'s dtype and memory format (into ``out``, a tensor like ``x``, if given
    and ``x`` is not NCHW-contiguous)."""
    view = _per_instance_view(x)
    if view is not None and x.numel() > 0:
        zeros, ones = _unit_statistics(view.shape[1], a.dtype, a.device)
        out = torch.batch_norm(view, a.reshape(-1), b.reshape(-1), zeros, ones, False, 0.0, 0.0, False)
        # Not a view in autograd's eyes: the output of a custom Function may then be modified in place
        # (e.g. by a following ReLU(inplace=True)).
        return torch.ops.aten._unsafe_view(out, x.shape)
    out = torch.empty_like(x) if out is None else out
    return torch.addcmul(b[:, :, None, None], x, a[:, :, None, None], out=out)


ONE_PASS_CONDITION: float = 1e-5
"""Largest relative error the one-pass variance may have: ``E[x^2] - mean^2`` loses about
``eps * mean^2 / var`` to cancellation, so it is used only where ``mean^2 / var`` is below
``ONE_PASS_CONDITION / eps(dtype)`` (float32: mean/std up to about 9; float64: 2e5); otherwise the
centred two-pass formula is used, as accurate as ``torch.var_mean``."""


PER_INSTANCE_MAP_SIZE: int = 512
"""channels_last maps of at least this many pixels (H·W) are reduced by per-instance kernel calls (~30 µs
each, no extra pass over memory); smaller ones by writing ``u * v`` into scratch space and summing it
(measured inside ResNet-50: at 28×28 the calls win, at 14×14 and 7×7 the scratch)."""


def _per_instance_sums(
    u: Tensor, v: Tensor, dtype: torch.dtype, scratch: Tensor | None = None
) -> tuple[Tensor, Tensor] | None:
    """``sum_hw(u * v)`` and ``sum_hw(u)`` for every instance and channel (N×C, accumulated and returned in
    ``dtype``) without a new full-size temporary, or None where that is not possible or not faster.

    The eval-mode ``batch_norm`` backward kernel, given ``u`` as the gradient and ``v`` as the input (with
    running mean 0 and variance 1), computes exactly these per channel: on the 1×(N·C)×H×W view of
    NCHW-contiguous tensors in one reading pass. No kernel reduces a channels_last tensor per instance
    and channel in one pass; there the products go into ``scratch`` (a tensor like ``u`` that the caller
    overwrites afterwards: its output) and are summed as N×(H·W)×C rows, or, on maps of
    ``PER_INSTANCE_MAP_SIZE`` or more, the backward kernel runs per instance (1×C×H×W slices).
    """
    if u.numel() == 0 or u.stride() != v.stride():
        return None
    n, c, h, w = u.shape
    if u.is_contiguous():
        zeros, ones = _unit_statistics(n * c, dtype, u.device)
        shape = (1, n * c, h, w)
        _, products, totals = torch.ops.aten.native_batch_norm_backward(
            u.view(shape), v.view(shape), ones, zeros, ones, None, None, False, 0.0, [False, True, True]
        )
        return products.view(n, c), totals.view(n, c)
    if not u.is_contiguous(memory_format=torch.channels_last):
        return None
    if h * w >= PER_INSTANCE_MAP_SIZE:
        zeros, ones = _unit_statistics(c, dtype, u.device)
        sums = [
            torch.ops.aten.native_batch_norm_backward(
                u[i : i + 1], v[i : i + 1], ones, zeros, ones, None, None, False, 0.0, [False, True, True]
            )
            for i in range(n)
        ]
        return torch.stack([s[1] for s in sums]), torch.stack([s[2] for s in sums])
    if scratch is None or scratch.dtype != dtype or scratch.stride() != u.stride():
        return None
    rows, products = _rows(u), _rows(scratch)
    torch.mul(rows, rows if v is u else _rows(v), out=products)
    return products.sum(dim=1), rows.sum(dim=1, dtype=dtype)


def _moments(x: Tensor, scratch: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-instance mean and biased variance over H×W, in the statistics dtype.

    The sum and the sum of squares without a new full-size temporary (``scratch``: see
    :func:`_per_instance_sums`), unless some instance and channel has ``mean^2 / var`` too large for that
    (see ``ONE_PASS_CONDITION``): then the centred two-pass formula.
    """
    hw = _spatial_size(x)
    dtype = statistics_dtype(x)
    if x.numel() > 0:
        if x.is_contiguous() and (x.dtype == dtype or hw < 256):
            # float32/float64 (or small half-precision maps, converted): two vectorised reductions are
            # faster than the batch_norm kernel.
            converted = x.to(dtype)
            mean = converted.sum(dim=(2, 3)) / hw
            mean_square = torch.linalg.vector_norm(converted, 2, dim=(2, 3)).square() / hw
        else:
            sums = _per_instance_sums(x, x, dtype, scratch)
            if sums is None:  # channels_last on small maps without scratch space, or half precision
                converted = x.to(dtype)
                sums = (converted.square().sum(dim=(2, 3)), converted.sum(dim=(2, 3)))
            mean, mean_square = sums[1] / hw, sums[0] / hw
        var = torch.addcmul(mean_square, mean, mean, value=-1.0).clamp_min_(0)
        limit = ONE_PASS_CONDITION / torch.finfo(dtype).eps
        # mean^2 / var <= limit, i.e. mean_square - (1 + limit) * var <= 0 everywhere; squares that
        # overflow (|x| beyond ~1e19 in float32: inf - inf) or NaN input make the maximum NaN, and the
        # centred formula is used.
        if float(torch.add(mean_square, var, alpha=-(1.0 + limit)).max()) <= 0.0:
            return mean, var
    else:
        mean = x.sum(dim=(2, 3), dtype=dtype) / hw
    centred = x - mean[:, :, None, None]  # in the statistics dtype
    return mean, centred.square_().sum(dim=(2, 3)) / hw


def _moment_coefficients(
    x: Tensor, mean: Tensor, var: Tensor, grad_mean: Tensor, grad_var: Tensor
) -> tuple[Tensor, Tensor]:
    """``p, q`` with ``grad_x = p * x + q``: the gradient of the per-instance moments with respect to the
    input (d mean / dx = 1/HW, d var / dx = 2 (x - mean) / HW).

    A variance beyond the statistics dtype's range (float32 input with |x| over ~1e19) is infinite; what
    depends on it (``rsqrt(var + eps)``) is then flat in it, so its gradient is taken as that limit, 0,
    instead of the ``inf * 0 = NaN`` autograd would give."""
    grad_var = torch.where(torch.isfinite(var), grad_var, 0.0)
    hw = _spatial_size(x)
    p = grad_var * (2.0 / hw)
    q = grad_mean / hw - p * mean
    return p, q


class _InstanceMoments(torch.autograd.Function):
    """(mean, biased variance) of every x[n, c] over H×W; saves only ``x`` and the N×C moments."""

    @staticmethod
    def forward(x: Tensor) -> tuple[Tensor, Tensor]:
        return _moments(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        (x,) = inputs
        mean, var = output
        ctx.save_for_backward(x, mean, var)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_mean: Tensor, grad_var: Tensor) -> Tensor:
        x, mean, var = ctx.saved_tensors
        return _affine(x, *_moment_coefficients(x, mean, var, grad_mean, grad_var))  # one pass


class _InstanceAffine(torch.autograd.Function):
    """``a[n, c] * x + b[n, c]``; saves only ``x`` and ``a``."""

    @staticmethod
    def forward(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return _affine(x, a, b)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, a, _ = inputs
        ctx.save_for_backward(x, a)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, a = ctx.saved_tensors
        need_x, need_a, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_a = grad_b = None
        if need_x:
            grad_x = torch.mul(grad, a[:, :, None, None], out=torch.empty_like(x))
        if need_a or need_b:
            grad_a, grad_b = _affine_reductions(grad, x, a.dtype)
        return grad_x, grad_a if need_a else None, grad_b if need_b else None


def _affine_reductions(
    grad: Tensor, x: Tensor, dtype: torch.dtype, scratch: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``sum_hw(grad * x)`` and ``sum_hw(grad)`` per instance and channel, in ``dtype``: the gradients of
    the per-instance affine's scale and shift (``scratch``: see :func:`_per_instance_sums`)."""
    sums = _per_instance_sums(grad, x, dtype, scratch)
    if sums is not None:
        return sums
    return (grad.to(dtype) * x.to(dtype)).sum(dim=(2, 3)), grad.sum(dim=(2, 3), dtype=dtype)


class _FusedInstanceAffine(torch.autograd.Function):
    """``a * x + b`` with ``(a, b) = coefficients(mean_hw, var_hw)`` computed from the per-instance moments
    of ``x`` by an arbitrary differentiable function of them and of ``params`` (the N×C maths of an AN
    layer: statistics, attention, mixture).

    One autograd node for the whole layer, so that the gradient of ``x`` is written once:
    ``grad_x = a * g + p * x + q`` (p, q from the moments' gradients), two passes into one new tensor,
    after one reduction pass for ``sum_hw(g * x)`` and ``sum_hw(g)``. The N×C graph is recorded in
    forward and differentiated in backward with ``torch.autograd.grad``; saves ``x``, nothing else of
    its size. First-order gradients only (``once_differentiable``); eager only (under ``torch.compile``
    the plain ops are used, see :func:`fused_instance_affine`).
    """

    @staticmethod
    def forward(ctx, x: Tensor, coefficients, *params: Tensor) -> Tensor:
        out = _channels_last_scratch(x)
        mean, var = _moments(x, out)
        with torch.enable_grad():
            mean.requires_grad_()
            var.requires_grad_()
            a, b = coefficients(mean, var)
        ctx.save_for_backward(x)
        ctx.graph = (mean, var, a, b)
        ctx.params = params
        return _affine(x, a.detach(), b.detach(), out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        mean, var, a, b = ctx.graph  # N×C graph, kept (small) in case backward runs again
        need_x = ctx.needs_input_grad[0]
        need_params = ctx.needs_input_grad[2:]
        wanted = [p for p, need in zip(ctx.params, need_params) if need]
        grad_x = _channels_last_scratch(grad)  # the input gradient, first scratch for the reductions
        grad_a, grad_b = _affine_reductions(grad, x, a.dtype, grad_x)
        grads = list(
            torch.autograd.grad(
                (a, b), [mean, var, *wanted], (grad_a, grad_b), retain_graph=True, allow_unused=True
            )
        )
        if need_x:
            grad_mean = grads[0] if grads[0] is not None else torch.zeros_like(mean)
            grad_var = grads[1] if grads[1] is not None else torch.zeros_like(var)
            p, q = _moment_coefficients(x, mean.detach(), var.detach(), grad_mean, grad_var)
            # a * grad + q in full precision, then + p * x with p in x's dtype: a mixed-dtype addcmul_
            # would convert the full-size tensors (5x slower in bfloat16); rounding p, the factor of
            # the smaller correction term, costs less accuracy than rounding a.
            grad_x = _affine(grad, a.detach(), q, grad_x)
            grad_x.addcmul_(x, p.to(x.dtype)[:, :, None, None])
        else:
            grad_x = None
        param_grads = iter(grads[2:])
        return (grad_x, None, *(next(param_grads) if need else None for need in need_params))


def plain_ops() -> bool:
    """True under ``torch.compile``/``torch.export`` and inside functorch transforms (``torch.func.grad``,
    ``vmap``, ...): plain differentiable ops then, which those trace, fuse and transform themselves."""
    return torch.compiler.is_compiling() or torch._C._functorch.peek_interpreter_stack() is not None


def fused_instance_affine(x: Tensor, coefficients, params: Iterable[Tensor]) -> Tensor:
    """``a[:, :, None, None] * x + b[:, :, None, None]`` with ``a, b = coefficients(mean_hw, var_hw)``,
    where ``mean_hw, var_hw`` are :func:`instance_moments` of ``x`` and ``coefficients`` is differentiable
    in them and in ``params`` (every tensor it reads that may need a gradient; read in training only,
    so a module's ``parameters()`` generator costs nothing in inference).

    Eager training: one custom autograd node (``_FusedInstanceAffine``). Inference: the same maths
    without autograd. Under ``torch.compile``: plain ops, which inductor fuses and differentiates.
    """
    if plain_ops():
        mean, var = instance_moments(x)
        a, b = coefficients(mean, var)
        return instance_affine(x, a, b)
    if not torch.is_grad_enabled():
        out = _channels_last_scratch(x)
        mean, var = _moments(x, out)
        a, b = coefficients(mean, var)
        return _affine(x, a, b, out)
    return _FusedInstanceAffine.apply(x, coefficients, *params)


def instance_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of each ``x[n, c]`` (N×C×H×W) over H×W, as two N×C tensors in float32 or
    wider; differentiable, saving only ``x``."""
    if plain_ops():
        # Inductor fuses the plain ops (a Welford reduction) and plans what to save by itself.
        var, mean = torch.var_mean(x.to(statistics_dtype(x)), dim=(2, 3), correction=0)
        return mean, var
    if not (torch.is_grad_enabled() and x.requires_grad):
        return _moments(x)  # inference: no autograd bookkeeping
    return _InstanceMoments.apply(x)


def instance_affine(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``a[:, :, None, None] * x + b[:, :, None, None]`` for N×C ``a`` and ``b`` (float32 or wider), in one
    pass, with ``x``'s dtype and memory format; differentiable in all three, saving only ``x`` and ``a``."""
    if plain_ops():
        return torch.addcmul(b[:, :, None, None], x.to(a.dtype), a[:, :, None, None]).to(x.dtype)
    if not (torch.is_grad_enabled() and (x.requires_grad or a.requires_grad or b.requires_grad)):
        return _affine(x, a, b)
    return _InstanceAffine.apply(x, a, b)


def pooled_descriptor(x: Tensor, mean_hw: Tensor, var_hw: Tensor, pooling: str, eps: float) -> Tensor:
    """The attention head's N×C descriptor from the per-instance moments: ``mean`` pooling, or
    ``mean * rsqrt(unbiased var + eps)`` with the variance of a 1×1 map taken as 0 (as
    ``attention.spatial_descriptor``)."""
    if pooling == "mean":
        return mean_hw
    hw = _spatial_size(x)
    return mean_hw * torch.rsqrt(var_hw * (hw / max(hw - 1, 1)) + eps)


def batch_norm_statistics(
    x: Tensor,
    mean_hw: Tensor,
    var_hw: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    learning: bool,
    momentum: float | None,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """Per-channel ``mean`` and ``rsqrt(var + eps)`` of BatchNorm from the per-instance moments.

    Batch statistics when ``learning`` (updating the running ones) or without running statistics,
    running statistics otherwise, with the same edge cases as ``stats.normalize_batch``: a channel with
    at most one value uses the running statistics unchanged, or, without them, standardises to 0
    (returned as a zero ``rstd``, which also gives the standardisation's zero gradient).
    """
    dtype = mean_hw.dtype
    if learning or running_mean is None or running_var is None:
        count = values_per_channel(x)
        if count > 1:
            mean = mean_hw.mean(dim=0)
            var = var_hw.mean(dim=0) + (mean_hw - mean).square().mean(dim=0)  # law of total variance
            if learning:
                update_running_stats(
                    running_mean, running_var, num_batches_tracked, momentum, mean, var, count
                )
            return mean, torch.rsqrt(var + eps)
        if running_mean is None or running_var is None:
            zeros = mean_hw.new_zeros(x.shape[1])
            return zeros, zeros
    return running_mean.to(dtype), torch.rsqrt(running_var.to(dtype) + eps)


def group_norm_statistics(
    x: Tensor, mean_hw: Tensor, var_hw: Tensor, num_groups: int, eps: float
) -> tuple[Tensor, Tensor]:
    """GroupNorm's ``mean`` and ``rsqrt(var + eps)`` per instance and group, from the per-instance moments,
    repeated for every channel of the group (N×C). A group of a single value standardises to 0."""
    n, c = mean_hw.shape
    grouped_mean = mean_hw.reshape(n, num_groups, c // num_groups)
    grouped_var = var_hw.reshape(n, num_groups, c // num_groups)
    mean = grouped_mean.mean(dim=2, keepdim=True)
    var = grouped_var.mean(dim=2, keepdim=True) + (grouped_mean - mean).square().mean(dim=2, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    if (c // num_groups) * _spatial_size(x) <= 1:
        rstd = torch.zeros_like(rstd)
    return mean.expand_as(grouped_mean).reshape(n, c), rstd.expand_as(grouped_mean).reshape(n, c)
