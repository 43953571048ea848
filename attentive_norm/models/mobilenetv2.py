"""MobileNetV2 (Sandler et al., CVPR 2018), width 1.0, with or without Attentive Normalization.

The module layout is torchvision's (``features.N.conv...``, ``classifier`` = Dropout + Linear), which is
also the layout of the authors' released AN checkpoint. In the AN model the norm after each depthwise
3×3 convolution (before its ReLU6) is AN, with K = 5, 5, 5, 5, 10, 10, 10 for the seven (t, c, n, s)
groups; every other norm stays BatchNorm (arXiv:1908.01259).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

from ..layers import AttentiveBatchNorm2d
from .features import build_model
from .registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2", "mobilenetv2_an"]

NormLayer = Callable[[int], nn.Module]

# (expand ratio t, output channels c, repeats n, first stride s) of the seven groups, width 1.0.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
AN_NUM_MIXTURES: tuple[int, ...] = (5, 5, 5, 5, 10, 10, 10)
"""The paper's K per (t, c, n, s) group for MobileNetV2-AN."""


class InvertedResidual(nn.Module):
    """Expand 1×1 -> depthwise 3×3 -> linear 1×1 projection, with an identity shortcut when shapes match.

    ``dw_norm_layer`` normalises the depthwise output: the slot AN takes in MobileNetV2-AN.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int,
        expand_ratio: int,
        norm_layer: NormLayer = nn.BatchNorm2d,
        dw_norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        hidden = in_chs * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(
                Conv2dNormActivation(
                    in_chs, hidden, kernel_size=1, norm_layer=norm_layer, activation_layer=nn.ReLU6
                )
            )
        layers += [
            Conv2dNormActivation(
                hidden,
                hidden,
                stride=stride,
                groups=hidden,
                norm_layer=dw_norm_layer,
                activation_layer=nn.ReLU6,
            ),
            nn.Conv2d(hidden, out_chs, 1, bias=False),
            norm_layer(out_chs),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and in_chs == out_chs

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """MobileNetV2, width 1.0, in torchvision's layout.

    Args:
        num_classes: classifier outputs (``0``: no classifier).
        in_chans: input channels.
        num_mixtures: K of the depthwise-conv AN, one per (t, c, n, s) group; ``None`` for the plain
            BatchNorm network.
        an_layer: builds an AN slot as ``an_layer(channels, num_mixtures=K)``; e.g. a ``partial`` of
            :class:`AttentiveBatchNorm2d` with another attention head.
        norm_layer: every other norm.
        drop_rate: dropout before the classifier (0.2 as in the paper's setting).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        num_mixtures: Sequence[int] | None = None,
        an_layer: Callable[..., nn.Module] = AttentiveBatchNorm2d,
        norm_layer: NormLayer = nn.BatchNorm2d,
        drop_rate: float = 0.2,
    ) -> None:
        super().__init__()
        if num_mixtures is not None and len(num_mixtures) != len(INVERTED_RESIDUAL_SETTING):
            raise ValueError(
                f"num_mixtures needs one K per group ({len(INVERTED_RESIDUAL_SETTING)}), got {num_mixtures}"
            )
        self.drop_rate = drop_rate
        self.num_features = 1280
        in_chs = 32
        features: list[nn.Module] = [
            Conv2dNormActivation(in_chans, in_chs, stride=2, norm_layer=norm_layer, activation_layer=nn.ReLU6)
        ]
        self.feature_info: list[dict] = []
        reduction = 2
        for group, (t, c, n, s) in enumerate(INVERTED_RESIDUAL_SETTING):
            if s > 1:
                # The last block at each resolution gives that resolution's feature map.
                self.feature_info.append(
                    {"num_chs": in_chs, "reduction": reduction, "module": f"features.{len(features) - 1}"}
                )
                reduction *= s
            dw_norm = norm_layer
            if num_mixtures is not None:
                dw_norm = partial(an_layer, num_mixtures=num_mixtures[group])
            for i in range(n):
                features.append(InvertedResidual(in_chs, c, s if i == 0 else 1, t, norm_layer, dw_norm))
                in_chs = c
        features.append(
            Conv2dNormActivation(
                in_chs, self.num_features, kernel_size=1, norm_layer=norm_layer, activation_layer=nn.ReLU6
            )
        )
        self.feature_info.append(
            {"num_chs": self.num_features, "reduction": reduction, "module": f"features.{len(features) - 1}"}
        )
        self.features = nn.Sequential(*features)
        self.reset_classifier(num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's init; AN layers keep their own (the paper's) init."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh Dropout + Linear classifier for ``num_classes`` (``0``: none)."""
        self.num_classes = num_classes
        if num_classes > 0:
            linear = nn.Linear(self.num_features, num_classes)
            nn.init.normal_(linear.weight, 0.0, 0.01)
            nn.init.zeros_(linear.bias)
            self.classifier: nn.Module = nn.Sequential(nn.Dropout(self.drop_rate), linear)
        else:
            self.classifier = nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def mobilenetv2(num_classes: int = 1000, **kwargs) -> nn.Module:
    """MobileNetV2 1.0 with BatchNorm: 3,504,872 parameters (torchvision's ``mobilenet_v2``)."""
    return build_model(MobileNetV2, num_classes=num_classes, **kwargs)


@register_model
def mobilenetv2_an(num_classes: int = 1000, **kwargs) -> nn.Module:
    """MobileNetV2 1.0 with AN after each depthwise 3×3, K = 5,5,5,5,10,10,10: 3,672,760 parameters."""
    kwargs.setdefault("num_mixtures", AN_NUM_MIXTURES)
    return build_model(MobileNetV2, num_classes=num_classes, **kwargs)
