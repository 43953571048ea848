"""Evaluation: loss, top-1 and top-5 accuracy over a loader, summed over all processes."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributed import all_reduce_sum

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str) -> torch.autocast:
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def correct_topk(logits: Tensor, target: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """How many rows have the target among their top-k scores, for each k (k capped at the classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top.eq(target[:, None])
    return [hits[:, :k].any(dim=1).sum() for k in ks]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    *,
    amp: str = "none",
    channels_last: bool = False,
) -> dict[str, float]:
    """``{"loss", "top1", "top5" (percent), "images", "skipped"}`` over every process's share."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss, top1, top5, images, skipped
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for images, target, skipped in loader:
        sums[4] += len(skipped)
        if len(target) == 0:
            continue
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        target = target.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
        sums[0] += F.cross_entropy(logits.float(), target, reduction="sum")
        top1, top5 = correct_topk(logits, target)
        sums[1] += top1
        sums[2] += top5
        sums[3] += len(target)
    model.train(was_training)
    loss, top1, top5, n, skipped = all_reduce_sum(sums).tolist()
    n_safe = max(n, 1.0)
    return {
        "loss": loss / n_safe,
        "top1": 100.0 * top1 / n_safe,
        "top5": 100.0 * top5 / n_safe,
        "images": int(n),
        "skipped": int(skipped),
    }
