"""DenseNet-121 (Huang et al., CVPR 2017), with or without Attentive Normalization.

The module layout is torchvision's (``features.denseblockN.denselayerM.norm1 ...``, ``transitionN``,
``norm5``, ``classifier``), so torchvision's DenseNet-121 weights load into the BN model; the final
ReLU is a module, ``features.relu5`` (no parameters), so that ``features`` ends with the activated map.

In the AN model ``norm2`` of every dense layer (the norm of the 128-channel bottleneck output, before
the 3×3 conv) is AN, with K = 10, 10, 20, 20 for the four dense blocks; stem, ``norm1``, transition
norms and ``norm5`` stay BatchNorm (arXiv:1908.01259).

This is the plain implementation: no gradient checkpointing ("memory efficient" in torchvision).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import AttentiveBatchNorm2d
from .features import build_model
from .registry import register_model

__all__ = ["DenseBlock", "DenseLayer", "DenseNet", "Transition", "densenet121", "densenet121_an"]

NormLayer = Callable[[int], nn.Module]

AN_NUM_MIXTURES: tuple[int, ...] = (10, 10, 20, 20)
"""The paper's K per dense block for DenseNet-121-AN."""


class DenseLayer(nn.Module):
    """BN-ReLU-conv1×1 (to ``bn_size * growth_rate``) then BN-ReLU-conv3×3 (to ``growth_rate``).

    ``bottleneck_norm_layer`` builds ``norm2``, the slot AN takes in DenseNet-AN.
    """

    def __init__(
        self,
        in_chs: int,
        growth_rate: int,
        bn_size: int,
        norm_layer: NormLayer = nn.BatchNorm2d,
        bottleneck_norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        mid_chs = bn_size * growth_rate
        self.norm1 = norm_layer(in_chs)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.norm2 = bottleneck_norm_layer(mid_chs)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid_chs, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers, each fed the concatenation of the block input and all earlier outputs."""

    def __init__(
        self,
        num_layers: int,
        in_chs: int,
        growth_rate: int,
        bn_size: int,
        norm_layer: NormLayer = nn.BatchNorm2d,
        bottleneck_norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(
                f"denselayer{i + 1}",
                DenseLayer(in_chs + i * growth_rate, growth_rate, bn_size, norm_layer, bottleneck_norm_layer),
            )

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-conv1×1 then 2×2 average pooling, between dense blocks."""

    def __init__(self, in_chs: int, out_chs: int, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        self.norm = norm_layer(in_chs)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNet(nn.Module):
    """DenseNet-BC in torchvision's layout (defaults: DenseNet-121).

    Args:
        num_classes: classifier outputs (``0``: no classifier).
        in_chans: input channels.
        growth_rate, block_config, num_init_features, bn_size: the DenseNet-BC configuration.
        num_mixtures: K of the ``norm2`` AN, one per dense block; ``None`` for the plain BN network.
        an_layer: builds an AN slot as ``an_layer(channels, num_mixtures=K)``.
        norm_layer: every other norm.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        num_mixtures: Sequence[int] | None = None,
        an_layer: Callable[..., nn.Module] = AttentiveBatchNorm2d,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if num_mixtures is not None and len(num_mixtures) != len(block_config):
            raise ValueError(
                f"num_mixtures needs one K per dense block ({len(block_config)}), got {num_mixtures}"
            )
        self.features = nn.Sequential(
            OrderedDict(
                conv0=nn.Conv2d(in_chans, num_init_features, 7, stride=2, padding=3, bias=False),
                norm0=norm_layer(num_init_features),
                relu0=nn.ReLU(inplace=True),
                pool0=nn.MaxPool2d(3, stride=2, padding=1),
            )
        )
        self.feature_info: list[dict] = []
        chs, reduction = num_init_features, 4
        for i, num_layers in enumerate(block_config):
            slot_norm = norm_layer
            if num_mixtures is not None:
                slot_norm = partial(an_layer, num_mixtures=num_mixtures[i])
            block = DenseBlock(num_layers, chs, growth_rate, bn_size, norm_layer, slot_norm)
            self.features.add_module(f"denseblock{i + 1}", block)
            chs += num_layers * growth_rate
            if i + 1 < len(block_config):
                self.feature_info.append(
                    {"num_chs": chs, "reduction": reduction, "module": f"features.denseblock{i + 1}"}
                )
                self.features.add_module(f"transition{i + 1}", Transition(chs, chs // 2, norm_layer))
                chs //= 2
                reduction *= 2
        self.features.add_module("norm5", norm_layer(chs))
        self.features.add_module("relu5", nn.ReLU(inplace=True))
        self.feature_info.append({"num_chs": chs, "reduction": reduction, "module": "features.relu5"})
        self.num_features = chs
        self.reset_classifier(num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's init; AN layers keep their own (the paper's) init."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh Linear classifier for ``num_classes`` (``0``: none)."""
        self.num_classes = num_classes
        if num_classes > 0:
            self.classifier: nn.Module = nn.Linear(self.num_features, num_classes)
            nn.init.zeros_(self.classifier.bias)
        else:
            self.classifier = nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def densenet121(num_classes: int = 1000, **kwargs) -> nn.Module:
    """DenseNet-121 with BatchNorm: 7,978,856 parameters (torchvision's ``densenet121``)."""
    return build_model(DenseNet, num_classes=num_classes, **kwargs)


@register_model
def densenet121_an(num_classes: int = 1000, **kwargs) -> nn.Module:
    """DenseNet-121 with AN at every ``norm2``, K = 10,10,20,20 per dense block: 8,342,288 parameters."""
    kwargs.setdefault("num_mixtures", AN_NUM_MIXTURES)
    return build_model(DenseNet, num_classes=num_classes, **kwargs)
