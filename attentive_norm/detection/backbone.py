"""A zoo model behind a Feature Pyramid Network: the backbone of the Mask R-CNN detectors.

Any zoo model with ``feature_info`` works (``resnet50_an``, ``resnet101``, ``mobilenetv2_an``, the CIFAR
ResNets, AOGNets). The contract is torchvision's (``out_channels`` and an ``OrderedDict`` of maps) plus
detectron2's ``output_shape()``; :meth:`ZooFPNBackbone.freeze` applies the paper's settings: norm
statistics frozen while AN's mixture and attention keep training, stem and first stage(s) frozen.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..layers.convert import freeze_norm
from ..models import create_model
from ..models.features import FeatureExtractor
from .heads import norm_layer


@dataclass(frozen=True)
class ShapeSpec:
    """Channels and stride (input pixels per feature pixel) of one output map."""

    channels: int
    stride: int


def default_out_indices(feature_info: Sequence[dict], num_levels: int = 4) -> list[int]:
    """The deepest map of each resolution, the last ``num_levels`` of them (ResNet: strides 4 to 32)."""
    last_per_reduction: dict[int, int] = {}
    for i, info in enumerate(feature_info):
        last_per_reduction[info["reduction"]] = i
    return sorted(last_per_reduction.values())[-num_levels:]


class ZooFPNBackbone(nn.Module):
    """``body`` (a zoo :class:`FeatureExtractor`) followed by an FPN with a max-pooled extra level.

    Returns ``OrderedDict`` ``{"0": P_first, ..., "pool": P_extra}``, all with ``out_channels`` channels.

    Args:
        body: the feature extractor; its maps must have strictly increasing strides.
        out_channels: FPN width (256 in the paper).
        norm: FPN norm, ``"none"``, ``"bn"`` or ``"gn"`` (the "AN (w/ GN)" configuration uses GN).
    """

    def __init__(self, body: FeatureExtractor, out_channels: int = 256, norm: str = "none") -> None:
        super().__init__()
        strides = list(body.reductions)
        if any(b <= a for a, b in itertools.pairwise(strides)):
            raise ValueError(f"backbone maps must have increasing strides for an FPN, got {strides}")
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            list(body.out_channels),
            out_channels,
            extra_blocks=LastLevelMaxPool(),
            norm_layer=norm_layer(norm),
        )
        self.out_channels = out_channels
        self._strides = {str(i): s for i, s in enumerate(strides)} | {"pool": 2 * strides[-1]}

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Name -> channels and stride of each returned map, in order."""
        return {name: ShapeSpec(self.out_channels, stride) for name, stride in self._strides.items()}

    @property
    def level_names(self) -> list[str]:
        """The names of the maps RoI pooling reads (all but the extra max-pooled one)."""
        return [name for name in self._strides if name != "pool"]

    def freeze(self, frozen_stages: int = 1, norm_eval: bool = True) -> None:
        """The paper's backbone settings for COCO; call once, before building the optimiser.

        Args:
            frozen_stages: freeze the stem and this many stages: every module of the body that
                computes before (or is part of) the ``frozen_stages``-th returned map gets
                ``requires_grad=False`` and fully frozen norms. ``0`` freezes nothing.
            norm_eval: freeze the statistics of every other norm of the body (they are used, not
                updated, even in training); parameters, AN mixtures and attention keep training.
        """
        if not 0 <= frozen_stages <= len(self.body.feature_info):
            raise ValueError(
                f"frozen_stages must be in 0..{len(self.body.feature_info)}, got {frozen_stages}"
            )
        if frozen_stages:
            stage = "model." + self.body.feature_info[frozen_stages - 1]["module"]
            frozen = _modules_computed_by(self.body, stage)
            for name in frozen:
                self.body.get_submodule(name).requires_grad_(False)
            _freeze_norms(self.body, "all", frozen)
        if norm_eval:
            _freeze_norms(self.body, "stats", None)


def _freeze_norms(model: nn.Module, mode: str, names: set[str] | None) -> None:
    """``freeze_norm`` on the named modules (all if ``None``); models without norms are left alone."""
    try:
        freeze_norm(model, mode, include=None if names is None else (lambda name, _m: name in names))
    except ValueError as e:
        if "no norm layer matches" not in str(e):
            raise


def _modules_computed_by(model: nn.Module, module_name: str, image_size: int = 64) -> set[str]:
    """Names of the modules with parameters or buffers whose first call ends no later than that of
    ``module_name``, found by running ``model`` once (in eval mode) on a small image."""
    order: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():

        def hook(_m: nn.Module, _args: Any, _out: Any, name: str = name) -> None:
            order.setdefault(name, len(order))

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        param = next(model.parameters())
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if module_name not in order:
        raise ValueError(f"{module_name!r} did not run in {type(model).__name__}.forward")
    limit = order[module_name]
    return {
        name
        for name, module in model.named_modules()
        if name in order
        and order[name] <= limit
        and (
            any(True for _ in module.parameters(recurse=False))
            or any(True for _ in module.buffers(recurse=False))
        )
    }


def build_backbone(
    name: str,
    *,
    pretrained: str | Path | None = None,
    out_indices: Sequence[int] | None = None,
    fpn_channels: int = 256,
    fpn_norm: str = "none",
    frozen_stages: int = 1,
    norm_eval: bool = True,
    **model_kwargs: Any,
) -> ZooFPNBackbone:
    """A zoo model (``create_model(name)``) with an FPN, an optional ImageNet checkpoint and the freezing.

    Args:
        name: a zoo model name (``resnet50_an``, ``resnet101``, ...).
        pretrained: a classification checkpoint for the zoo model (ours or the authors'), loaded before
            the classifier is dropped; ``None`` starts from random weights.
        out_indices: entries of the model's ``feature_info`` to feed the FPN; default
            :func:`default_out_indices`.
        model_kwargs: passed to the zoo builder (e.g. ``num_mixtures``).
    """
    model = create_model(name, pretrained=str(pretrained) if pretrained else None, **model_kwargs)
    if not hasattr(model, "feature_info"):
        raise ValueError(f"zoo model {name!r} has no feature_info, so it cannot feed an FPN")
    if out_indices is None:
        out_indices = default_out_indices(model.feature_info)
    backbone = ZooFPNBackbone(FeatureExtractor(model, out_indices), fpn_channels, fpn_norm)
    backbone.freeze(frozen_stages, norm_eval)
    return backbone
