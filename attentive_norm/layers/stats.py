"""Batch statistics for the AN layers: per-channel moments, synced across processes, running averages."""

from __future__ import annotations

import torch
from torch import Tensor


def batch_moments(x: Tensor, process_group: object | None = None) -> tuple[Tensor, Tensor, int]:
    """Per-channel mean and biased variance of N×C×H×W ``x`` over (N, H, W), and the sample count.

    With a ``process_group`` (and an initialised world of more than one process) the moments are those
    of the union of every process's batch, and gradients flow back through the reduction exactly as
    if the whole batch were on one process (the all-reduce is differentiable).
    """
    count = x.shape[0] * x.shape[2] * x.shape[3]
    if process_group is None or not _distributed_active(process_group):
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        return mean, var, count
    return _synced_moments(x, process_group)


@torch.jit.unused
def _distributed_active(process_group: object) -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size(process_group) > 1


@torch.jit.unused
def _synced_moments(x: Tensor, process_group: object) -> tuple[Tensor, Tensor, int]:
    """Moments over every process's batch: gather each process's (count, mean, M2) and combine them
    with Chan's parallel formula, which stays accurate when |mean| >> std. Differentiable."""
    from torch.distributed.nn.functional import all_gather

    local_count = x.shape[0] * x.shape[2] * x.shape[3]
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    var, mean = torch.var_mean(work, dim=(0, 2, 3), correction=0)
    count = torch.full((1,), float(local_count), dtype=work.dtype, device=x.device)
    gathered = all_gather(torch.cat([count, mean, var * local_count]), group=process_group)
    stacked = torch.stack(list(gathered))  # world × (1 + 2C)
    channels = x.shape[1]
    counts = stacked[:, :1]
    means, m2s = stacked[:, 1:].split(channels, dim=1)
    total = counts.sum()
    mean = (counts * means).sum(dim=0) / total
    m2 = (m2s + counts * (means - mean) ** 2).sum(dim=0)
    return mean, m2 / total, int(total.item())


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

    ``momentum=None`` gives a cumulative moving average, as in PyTorch.
    """
    if running_mean is None or running_var is None or num_batches_tracked is None:
        return
    with torch.no_grad():
        num_batches_tracked.add_(1)
        factor = 1.0 / float(num_batches_tracked.item()) if momentum is None else momentum
        unbiased = var.detach() * (count / max(count - 1, 1))
        running_mean.mul_(1 - factor).add_(mean.detach().to(running_mean.dtype), alpha=factor)
        running_var.mul_(1 - factor).add_(unbiased.to(running_var.dtype), alpha=factor)
