"""A timm-style norm-layer factory: pick a norm by name, get a constructor that takes the channel count.

Model code written as ``norm_layer(channels)`` can then switch between BatchNorm, GroupNorm and the AN
layers from a config string::

    norm = get_norm_layer("an", num_mixtures=20)
    layer = norm(256)  # AttentiveBatchNorm2d(256, num_mixtures=20)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from .attentive_norm import AttentiveBatchNorm2d, AttentiveGroupNorm


class ChannelFirstGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` taking the channel count first (and 32 groups by default, as in the paper's
    detection heads), so that it is built like every other norm layer: ``norm_layer(channels)``."""

    def __init__(
        self,
        num_channels: int,
        num_groups: int = 32,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_groups, num_channels, eps, affine, device=device, dtype=dtype)


NORM_LAYERS: dict[str, Callable[..., nn.Module]] = {
    "batchnorm": nn.BatchNorm2d,
    "frozen_batchnorm": FrozenBatchNorm2d,
    "groupnorm": ChannelFirstGroupNorm,
    "an": AttentiveBatchNorm2d,
    "attentive_batchnorm": AttentiveBatchNorm2d,
    "an_gn": AttentiveGroupNorm,
    "attentive_groupnorm": AttentiveGroupNorm,
}
"""Norm layers by name. Every entry is built as ``cls(channels, **kwargs)``; add your own the same way."""


def get_norm_layer(
    name_or_class: str | Callable[..., nn.Module], **defaults: object
) -> Callable[..., nn.Module]:
    """A constructor ``f(channels, **overrides) -> nn.Module`` for the named (or given) norm layer.

    ``name_or_class`` is a key of :data:`NORM_LAYERS` (case-insensitive) or a class/callable taking the
    channel count first; ``nn.GroupNorm`` itself (groups first) is replaced by
    :class:`ChannelFirstGroupNorm`. ``defaults`` become keyword arguments of every layer built, and are
    checked against the layer's signature now rather than at the first construction.
    """
    if isinstance(name_or_class, str):
        key = name_or_class.strip().lower()
        if key not in NORM_LAYERS:
            raise ValueError(
                f"unknown norm layer {name_or_class!r}; expected one of {', '.join(sorted(NORM_LAYERS))} "
                "(or a class taking the channel count first)"
            )
        layer_class = NORM_LAYERS[key]
    elif name_or_class is nn.GroupNorm:
        layer_class = ChannelFirstGroupNorm
    elif callable(name_or_class):
        layer_class = name_or_class
    else:
        raise ValueError(
            f"get_norm_layer expects a name ({', '.join(sorted(NORM_LAYERS))}) or a class, "
            f"got {name_or_class!r}"
        )
    _check_keywords(layer_class, defaults)
    return functools.partial(layer_class, **defaults)


def _check_keywords(layer_class: Callable[..., nn.Module], defaults: dict[str, object]) -> None:
    """Refuse keyword arguments the layer does not take, naming the layer."""
    try:
        signature = inspect.signature(layer_class)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    try:
        signature.bind_partial(1, **defaults)
    except TypeError as error:
        name = getattr(layer_class, "__name__", repr(layer_class))
        raise TypeError(f"{name}{signature}: {error}") from None
