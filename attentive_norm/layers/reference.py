"""A plain, line-by-line re-statement of the AN formula (arXiv:1908.01259), the ground truth for tests.

Nothing here is fast or clever: every fast path of the package is tested against these functions to
float64 precision, forward and backward, in training and in eval mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def reference_batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """BatchNorm without affine; in training, updates the running statistics (unbiased variance)."""
    dims = [0, *list(range(2, x.dim()))]
    shape = [1, -1] + [1] * (x.dim() - 2)
    if training:
        mean = x.mean(dim=dims)
        var = ((x - mean.view(shape)) ** 2).mean(dim=dims)
        if running_mean is not None and running_var is not None:
            count = x.numel() // x.shape[1]
            with torch.no_grad():
                running_mean.copy_((1 - momentum) * running_mean + momentum * mean)
                running_var.copy_((1 - momentum) * running_var + momentum * var * count / (count - 1))
    else:
        assert running_mean is not None and running_var is not None
        mean, var = running_mean, running_var
    return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps)


def reference_attentive_batch_norm(
    x: Tensor,
    mixture_weight: Tensor,
    mixture_bias: Tensor,
    attention_weight: Tensor,
    logit_weight: Tensor,
    logit_bias: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    logit_running_mean: Tensor | None,
    logit_running_var: Tensor | None,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
    pooling_eps: float = 1e-3,
) -> Tensor:
    """The paper's AN layer: BN standardisation, mean*rsqrt(var) pooling, conv -> BN_K -> hsigmoid."""
    xhat = reference_batch_norm(x, running_mean, running_var, training, momentum, eps)
    mean_hw = x.mean(dim=(2, 3))
    var_hw = x.var(dim=(2, 3), unbiased=True)
    s = mean_hw / torch.sqrt(var_hw + pooling_eps)
    logits = s @ attention_weight.reshape(attention_weight.shape[0], -1).t()
    logits = reference_batch_norm(logits, logit_running_mean, logit_running_var, training, momentum, eps)
    lam = F.relu6(logits * logit_weight + logit_bias + 3) / 6
    gamma = lam @ mixture_weight
    beta = lam @ mixture_bias
    return gamma[:, :, None, None] * xhat + beta[:, :, None, None]


def reference_for_layer(layer: torch.nn.Module, x: Tensor, training: bool) -> Tensor:
    """:func:`reference_attentive_batch_norm` with the tensors and settings of an
    ``AttentiveBatchNorm2d`` with the paper's head (in training it updates the layer's running
    statistics, as the layer does)."""
    head = layer.attention
    return reference_attentive_batch_norm(
        x,
        layer.mixture_weight,
        layer.mixture_bias,
        head.weight,
        head.norm.weight,
        head.norm.bias,
        layer.running_mean,
        layer.running_var,
        head.norm.running_mean,
        head.norm.running_var,
        training,
        layer.momentum,
        layer.eps,
        head.pooling_eps,
    )


def reference_attentive_group_norm(
    x: Tensor,
    num_groups: int,
    mixture_weight: Tensor,
    mixture_bias: Tensor,
    attention_weight: Tensor,
    attention_bias: Tensor,
    eps: float = 1e-5,
    pooling_eps: float = 1e-3,
) -> Tensor:
    """The GN-based AN: GroupNorm standardisation, conv with bias -> hsigmoid attention."""
    n, c, h, w = x.shape
    grouped = x.reshape(n, num_groups, -1)
    mean = grouped.mean(dim=2, keepdim=True)
    var = ((grouped - mean) ** 2).mean(dim=2, keepdim=True)
    xhat = ((grouped - mean) / torch.sqrt(var + eps)).reshape(n, c, h, w)
    s = x.mean(dim=(2, 3)) / torch.sqrt(x.var(dim=(2, 3), unbiased=True) + pooling_eps)
    logits = s @ attention_weight.reshape(attention_weight.shape[0], -1).t() + attention_bias
    lam = F.relu6(logits + 3) / 6
    return (lam @ mixture_weight)[:, :, None, None] * xhat + (lam @ mixture_bias)[:, :, None, None]
