"""Parameter and compute counts of the zoo's models, in the conventions of the paper's tables.

Compute is counted in multiply-accumulates (MACs) and reported the way the paper (and torchvision)
print "FLOPs": ResNet-50 at 224×224 is 4.09G. What is counted, for one forward pass in eval mode:

- convolutions: ``output elements × in_channels / groups × kernel area`` (transposed: per input
  element); fully connected layers: ``output elements × in_features``. Biases are not counted;
- every operation of an Attentive Normalization layer that a BatchNorm does not do, per instance
  of C channels on an H×W map with K mixture components:

  - pooling statistics: 2·C·H·W, a sum and a sum of squares per element (``mean`` pooling: C·H·W);
  - attention projection: K·C, the C->K 1×1 conv (MLP head: 2K·C + 2K·K);
  - logit norm: K, a per-logit affine in eval (heads with a norm);
  - mixing: 2·K·C, ``lam @ Gamma`` and ``lam @ Beta``;
  - per-instance affine: C·H·W, which cannot be folded into the conv as BatchNorm's can;

- nothing else: BatchNorm (folded into the preceding conv at inference), activations, pooling,
  residual additions and concatenations are free, as in the paper's tables.

Modules are found by forward hooks, so work done with functional calls outside ``nn.Conv*``,
``nn.Linear`` and the AN layers (e.g. ``F.conv2d`` in a custom module) is not seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import AttentiveBatchNorm2d, AttentiveGroupNorm

__all__ = ["attentive_norm_macs", "count_flops", "count_flops_per_module", "count_params"]

_AN_LAYERS = (AttentiveBatchNorm2d, AttentiveGroupNorm)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones once), the convention of the paper's tables: all of them,
    including the attention BatchNorm's affine. ``trainable_only`` skips frozen ones."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def attentive_norm_macs(layer: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs an AN layer adds over a BatchNorm for an N×C×H×W input (table in the module docstring)."""
    n, c, h, w = input_shape
    k = layer.num_mixtures
    head = layer.attention
    pooling = (2 if head.pooling == "mean_rsqrt_var" else 1) * c * h * w
    projection = k * c if head.hidden_weight is None else 2 * k * c + 2 * k * k
    logit_norm = k if head.norm is not None else 0
    mixing = 2 * k * c
    affine = c * h * w
    return n * (pooling + projection + logit_norm + mixing + affine)


def count_flops_per_module(model: nn.Module, input_size: Sequence[int] = (1, 3, 224, 224)) -> dict[str, int]:
    """MACs of each counted module (by name; see the module docstring) for one eval-mode forward pass
    of a zero tensor of ``input_size`` (batch included), on the model's device and dtype.

    BN models can be counted on the ``meta`` device (no memory, no compute); AN layers need a real one.
    """
    counts: dict[str, int] = {}
    handles = []
    an_prefixes = [name + "." for name, m in model.named_modules() if isinstance(m, _AN_LAYERS)]
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in an_prefixes):
            continue  # inside an AN layer: counted by the layer as a whole
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear, *_AN_LAYERS)):
            handles.append(module.register_forward_hook(_counting_hook(name, counts)))
    param = next(model.parameters(), None)
    factory = {"device": param.device, "dtype": param.dtype} if param is not None else {}
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(tuple(input_size), **factory))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return counts


def count_flops(model: nn.Module, input_size: Sequence[int] = (1, 3, 224, 224)) -> int:
    """Multiply-accumulates of one forward pass at ``input_size`` (batch included): the paper's "FLOPs"
    (ResNet-50: 4.09G at 1×3×224×224). See the module docstring for what is counted."""
    return sum(count_flops_per_module(model, input_size).values())


def _counting_hook(name: str, counts: dict[str, int]) -> Any:
    def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        counts[name] = counts.get(name, 0) + _module_macs(module, args[0], output)

    return hook


def _module_macs(module: nn.Module, x: Tensor, out: Tensor) -> int:
    if isinstance(module, _AN_LAYERS):
        return attentive_norm_macs(module, x.shape)
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    kernel = math.prod(module.kernel_size)
    if module.transposed:
        return x.numel() * (module.out_channels // module.groups) * kernel
    return out.numel() * (module.in_channels // module.groups) * kernel
