"""What AN learns: the mean mixture weights per class of one AN layer (the paper's attention figure).

A forward hook on the layer's attention head collects the N×K weights ``lam`` of every validation
image; averaging them per class gives a classes × K matrix. Distinct rows mean the layer picks
different mixtures of its K affine transforms for different classes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..layers import AttentiveBatchNorm2d, AttentiveGroupNorm
from .distributed import all_reduce_sum


def an_layer_names(model: nn.Module) -> list[str]:
    """Qualified names of the AN layers of ``model``, in module order."""
    return [n for n, m in model.named_modules() if isinstance(m, (AttentiveBatchNorm2d, AttentiveGroupNorm))]


@torch.no_grad()
def class_mean_attention(
    model: nn.Module, loader: Iterable, layer: str, num_classes: int, device: torch.device
) -> Tensor:
    """classes × K: the mean attention weights of AN layer ``layer`` over the images of each class."""
    head = model.get_submodule(layer).attention
    captured: list[Tensor] = []
    handle = head.register_forward_hook(lambda _m, _args, lam: captured.append(lam.detach().float()))
    was_training = model.training
    model.eval()
    sums = counts = None
    try:
        for images, target, _skipped in loader:
            if len(target) == 0:
                continue
            captured.clear()
            model(images.to(device))
            lam = captured[-1]
            if sums is None:
                sums = torch.zeros(num_classes, lam.shape[1], dtype=torch.float64, device=device)
                counts = torch.zeros(num_classes, 1, dtype=torch.float64, device=device)
            target = target.to(device)
            sums.index_add_(0, target, lam.double())
            counts.index_add_(0, target, torch.ones_like(target, dtype=torch.float64)[:, None])
    finally:
        handle.remove()
        model.train(was_training)
    if sums is None:
        raise ValueError("no images to compute the attention weights on")
    return (all_reduce_sum(sums) / all_reduce_sum(counts).clamp_min(1)).float().cpu()
