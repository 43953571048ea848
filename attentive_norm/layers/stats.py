"""Batch statistics for the AN layers: per-channel moments, training-mode standardisation, running
averages, and the same synchronised across processes.

Everything but the distributed helpers (``distributed_active``, ``synced_*``) is TorchScript-compatible,
free of ``.item()`` (so ``torch.compile(fullgraph=True)`` sees no graph break), and computes statistics
in float32 or wider.
Callers that want ``torch.fx.symbolic_trace`` to work register these functions with ``torch.fx.wrap``
in their own module: they branch on shapes, which symbolic tracing cannot follow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def statistics_dtype(x: Tensor) -> torch.dtype:
    """float32 for half-precision inputs, the input's own dtype for float32 and float64."""
    return torch.promote_types(x.dtype, torch.float32)


def register_running_stats(
    module: nn.Module,
    num_features: int,
    track: bool = True,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Give ``module`` BatchNorm's buffers ``running_mean`` (zeros), ``running_var`` (ones) and
    ``num_batches_tracked`` (0), or register them as None when ``track`` is False (same state-dict keys
    as ``nn.BatchNorm2d``)."""
    if not track:
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            module.register_buffer(name, None)
        return
    module.register_buffer("running_mean", torch.zeros(num_features, device=device, dtype=dtype))
    module.register_buffer("running_var", torch.ones(num_features, device=device, dtype=dtype))
    module.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))


def values_per_channel(x: Tensor) -> int:
    """How many values of one channel an N×C×... batch holds."""
    return x.numel() // x.shape[1]


def batch_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of N×C×... ``x`` over every dim but 1, in float32 or wider;
    zeros for an empty batch (which has no statistics; its standardised output is empty anyway)."""
    dtype = statistics_dtype(x)
    if values_per_channel(x) == 0:
        zeros = torch.zeros(x.shape[1], dtype=dtype, device=x.device)
        return zeros, zeros.clone()
    dims = [0] + [d for d in range(2, x.dim())]  # a comprehension, as TorchScript needs
    var, mean = torch.var_mean(x.to(dtype), dim=dims, correction=0)
    return mean, var


def standardise(x: Tensor, mean: Tensor, var: Tensor, eps: float) -> Tensor:
    """``(x - mean) * rsqrt(var + eps)`` per channel, computed in the statistics' (wider) dtype."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    return (x.to(mean.dtype) - mean.view(shape)) * torch.rsqrt(var + eps).view(shape)


def update_running_stats(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    momentum: float | None,
    mean: Tensor,
    var: Tensor,
    count: int,
) -> None:
    """Update running mean and (unbiased) running variance in place, the way ``nn.BatchNorm`` does.

    ``momentum=None`` gives a cumulative moving average, as in PyTorch; its factor ``1/num_batches`` is
    kept a tensor so no host synchronisation (``.item()``) is needed.
    """
    if running_mean is None or running_var is None or num_batches_tracked is None:
        return
    with torch.no_grad():
        num_batches_tracked.add_(1)
        unbiased = var.detach() * (count / max(count - 1, 1))
        if momentum is None:
            factor = num_batches_tracked.to(running_mean.dtype).reciprocal()
            running_mean.add_((mean.detach().to(running_mean.dtype) - running_mean) * factor)
            running_var.add_((unbiased.to(running_var.dtype) - running_var) * factor)
        else:
            running_mean.mul_(1 - momentum).add_(mean.detach().to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


def normalize_batch(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    update: bool,
    momentum: float | None,
    eps: float,
) -> Tensor:
    """Training-mode BatchNorm without affine on N×C×... ``x``; updates the running statistics if
    ``update``.

    A channel holding a single value has no batch variance, and an empty batch no statistics at all:
    with running statistics the input is then standardised with them and they are left unchanged;
    without, a single value gives 0 (zero deviation from a mean equal to the value). Fixed momentum
    uses PyTorch's fused kernel; ``momentum=None`` the explicit path, whose cumulative factor is a
    tensor.
    """
    count = values_per_channel(x)
    if count <= 1 and running_mean is not None and running_var is not None:
        return F.batch_norm(x, running_mean, running_var, None, None, False, 0.0, eps)
    if momentum is not None and count > 1:
        update = update and running_mean is not None
        if update and num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        return F.batch_norm(
            x,
            running_mean if update else None,
            running_var if update else None,
            None,
            None,
            True,
            momentum,
            eps,
        )
    mean, var = batch_moments(x)
    if update:
        update_running_stats(running_mean, running_var, num_batches_tracked, momentum, mean, var, count)
    return standardise(x, mean, var, eps)


@torch.jit.unused
def distributed_active(process_group: object | None) -> bool:
    """True when ``process_group`` spans more than one initialised process."""
    import torch.distributed as dist

    return (
        process_group is not None
        and dist.is_available()
        and dist.is_initialized()
        and dist.get_world_size(process_group) > 1
    )


@torch.jit.unused
def synced_batch_moments(x: Tensor, process_group: object) -> tuple[Tensor, Tensor, int]:
    """Per-channel mean, biased variance and value count over every process's batch.

    Gathers each process's (count, mean, M2) and combines them with Chan's parallel formula, which stays
    accurate when |mean| >> std. Differentiable: gradients flow back through the gather exactly as if
    the whole batch were on one process. Every process must call this (it is a collective).
    """
    from torch.distributed.nn.functional import all_gather

    local_count = values_per_channel(x)
    mean, var = batch_moments(x)  # zeros for an empty local batch, which then contributes nothing
    count = torch.full((1,), float(local_count), dtype=mean.dtype, device=x.device)
    gathered = all_gather(torch.cat([count, mean, var * local_count]), group=process_group)
    stacked = torch.stack(list(gathered))  # world × (1 + 2C)
    counts = stacked[:, :1]
    means, m2s = stacked[:, 1:].split(x.shape[1], dim=1)
    total = counts.sum()
    mean = (counts * means).sum(dim=0) / total
    m2 = (m2s + counts * (means - mean) ** 2).sum(dim=0)
    return mean, m2 / total, int(total.item())


@torch.jit.unused
def synced_normalize_batch(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    update: bool,
    momentum: float | None,
    eps: float,
    process_group: object | None,
) -> Tensor:
    """:func:`normalize_batch` with the statistics of every process's batch (SyncBatchNorm).

    The fallback for at most one value per channel is decided on the global count, after the
    collective, so processes with different local batch sizes never disagree about taking part in it.
    """
    if not distributed_active(process_group):
        return normalize_batch(x, running_mean, running_var, num_batches_tracked, update, momentum, eps)
    mean, var, count = synced_batch_moments(x, process_group)
    if count <= 1 and running_mean is not None and running_var is not None:
        return F.batch_norm(x, running_mean, running_var, None, None, False, 0.0, eps)
    if update:
        update_running_stats(running_mean, running_var, num_batches_tracked, momentum, mean, var, count)
    return standardise(x, mean, var, eps)
