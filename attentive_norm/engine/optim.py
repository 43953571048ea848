"""SGD with the paper's weight decay on every parameter, or the common norm/bias exclusion.

The paper (and the authors' code by default) decays ALL parameters, the AN mixture included. With
``decay_norm_bias=False`` the parameters of norm layers (BatchNorm/GroupNorm/LayerNorm affine, the AN
mixture weights and biases and the attention's logit-norm affine) and every bias are not decayed.
Norm layers are recognised by their type, never by tensor shape: a rule like "decay only tensors
with ndim > 1" would wrongly decay the K×C AN mixtures.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AttentiveBatchNorm2d, AttentiveGroupNorm, LogitNorm
from ..layers.frozen_stats import FrozenStatsBatchNorm2d

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.RMSNorm,
    AttentiveBatchNorm2d,
    AttentiveGroupNorm,
    LogitNorm,
    FrozenStatsBatchNorm2d,
)
"""Modules whose own parameters count as norm parameters (an AN layer's attention projection is a
child module, an ``AttentionHead``, and is decayed like any other weight)."""


def param_groups(model: nn.Module, weight_decay: float, decay_norm_bias: bool = True) -> list[dict]:
    """Optimizer parameter groups: one decayed group, or decayed and not-decayed (norm and bias)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            excluded = not decay_norm_bias and (isinstance(module, NORM_TYPES) or name.endswith("bias"))
            (no_decay if excluded else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(
    model: nn.Module,
    lr: float,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 1e-4,
    decay_norm_bias: bool = True,
) -> torch.optim.SGD:
    """The paper's optimiser: SGD with momentum 0.9, no Nesterov, weight decay on all parameters."""
    groups = param_groups(model, weight_decay, decay_norm_bias)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
