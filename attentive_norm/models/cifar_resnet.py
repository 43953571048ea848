"""CIFAR-style ResNets (He et al., CVPR 2016, §4.2), with or without Attentive Normalization.

Small networks for CPU-scale experiments: a 3×3 stem with 16 channels, three stages of ``n``
BasicBlocks with 16, 32 and 64 channels (the second and third start with stride 2), global average
pooling and a linear classifier; depth ``6n + 2`` (ResNet-20: n = 3, ResNet-56: n = 9). Any input
of at least 1×1 pixels works (8×8 digits, 28×28 MNIST, 32×32 CIFAR).

Choices, documented:
    - Shortcuts are the paper's option A: identity, and where the shape changes a parameter-free
      stride-2 subsampling with zero-padded extra channels. So the parameter counts are the paper's
      (ResNet-20: 0.27M, ResNet-56: 0.85M) and every norm of the network sits inside a block.
    - AN replaces ``bn1`` of each block by default, following the paper's BasicBlock choice for
      ResNet-34 ("an_bn1"); ``placement="bn12"`` replaces ``bn1`` and ``bn2``. The stem norm stays BN.
    - K per stage defaults to (5, 5, 10): like MobileNetV2-AN, fewer components where there are few
      channels (16 and 32) and 10 for the 64-channel stage. The paper has no CIFAR ResNet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import AttentiveBatchNorm2d
from .features import build_model
from .registry import register_model

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet20_an", "resnet56", "resnet56_an"]

NormLayer = Callable[[int], nn.Module]

AN_NUM_MIXTURES: tuple[int, int, int] = (5, 5, 10)
"""Default K per stage of the CIFAR ResNet-AN models (our choice; see the module docstring)."""

PLACEMENTS: tuple[str, ...] = ("bn1", "bn12")
"""Where AN goes in each BasicBlock: ``bn1`` (after the first 3×3) or ``bn12`` (after both 3×3)."""


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_chs = out_chs - in_chs

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra_chs // 2, self.extra_chs - self.extra_chs // 2))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_chs={self.extra_chs}"


class BasicBlock(nn.Module):
    """conv3×3-norm-ReLU-conv3×3-norm, plus the shortcut, then ReLU.

    ``norm1_layer`` and ``norm2_layer`` build ``bn1`` and ``bn2``, the slots AN can take.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        norm1_layer: NormLayer = nn.BatchNorm2d,
        norm2_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm1_layer(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = norm2_layer(out_chs)
        if stride != 1 or in_chs != out_chs:
            self.shortcut: nn.Module = ZeroPadShortcut(in_chs, out_chs, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images.

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110, ...).
        num_classes: classifier outputs (``0``: no classifier).
        in_chans: input channels (1 for grey-scale digits).
        num_mixtures: K of the AN layers, one per stage; ``None`` for the plain BN network.
        placement: ``"bn1"`` or ``"bn12"`` (see ``PLACEMENTS``); only used with ``num_mixtures``.
        an_layer: builds an AN slot as ``an_layer(channels, num_mixtures=K)``.
        norm_layer: every other norm.
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_chans: int = 3,
        num_mixtures: Sequence[int] | None = None,
        placement: str = "bn1",
        an_layer: Callable[..., nn.Module] = AttentiveBatchNorm2d,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 56, ...), got {depth}")
        if placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {placement!r}; expected one of {', '.join(PLACEMENTS)}")
        widths = (16, 32, 64)
        if num_mixtures is not None and len(num_mixtures) != len(widths):
            raise ValueError(f"num_mixtures needs one K per stage ({len(widths)}), got {num_mixtures}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = norm_layer(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.feature_info: list[dict] = []
        in_chs = widths[0]
        for i, width in enumerate(widths):
            norm1 = norm2 = norm_layer
            if num_mixtures is not None:
                norm1 = partial(an_layer, num_mixtures=num_mixtures[i])
                norm2 = norm1 if placement == "bn12" else norm_layer
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(in_chs, width, stride if j == 0 else 1, norm1, norm2))
                in_chs = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": width, "reduction": 2**i, "module": f"layer{i + 1}"})
        self.num_features = in_chs
        self.reset_classifier(num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """He init for the convolutions, unit-gain BN; AN layers keep their own (the paper's) init."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh Linear classifier for ``num_classes`` (``0``: none)."""
        self.num_classes = num_classes
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _cifar_resnet(depth: int, num_classes: int, an: bool, **kwargs) -> nn.Module:
    if an:
        kwargs.setdefault("num_mixtures", AN_NUM_MIXTURES)
    return build_model(CifarResNet, depth=depth, num_classes=num_classes, **kwargs)


@register_model
def resnet20(num_classes: int = 10, **kwargs) -> nn.Module:
    """CIFAR ResNet-20 with BatchNorm (option-A shortcuts): 269,722 parameters for 10 classes."""
    return _cifar_resnet(20, num_classes, an=False, **kwargs)


@register_model
def resnet56(num_classes: int = 10, **kwargs) -> nn.Module:
    """CIFAR ResNet-56 with BatchNorm (option-A shortcuts): 853,018 parameters for 10 classes."""
    return _cifar_resnet(56, num_classes, an=False, **kwargs)


@register_model
def resnet20_an(num_classes: int = 10, **kwargs) -> nn.Module:
    """CIFAR ResNet-20 with AN at ``bn1`` of each block (``placement="bn12"``: also ``bn2``), K = 5,5,10."""
    return _cifar_resnet(20, num_classes, an=True, **kwargs)


@register_model
def resnet56_an(num_classes: int = 10, **kwargs) -> nn.Module:
    """CIFAR ResNet-56 with AN at ``bn1`` of each block (``placement="bn12"``: also ``bn2``), K = 5,5,10."""
    return _cifar_resnet(56, num_classes, an=True, **kwargs)
