"""ResNets with Attentive Normalization (arXiv:1908.01259): the paper's ResNet-34/50/101(-d) and ablations.

Layout: torchvision's ResNet v1.5 (stride in the 3×3 conv), whose module names (``conv1``, ``bn1``,
``layer1.0.conv1``, ``downsample.0``, ``fc``, ...) are also those of the authors' checkpoints, so their
state dicts load unchanged. The "-d" variants (the paper's 200-epoch models) use a deep stem
(3×3 convs 3->32/2, 32->32, 32->64, kept as ``conv1.0/.3/.6``), a 2×2/2 max pool, and an average-pool
shortcut (``AvgPool2d(2, 2)`` then 1×1 conv + norm) in strided blocks.

Where AN goes is the ``placement`` keyword; it names norm slots of each block:

- Bottleneck: ``"bn2"`` (paper default: the norm after the 3×3 conv), ``"bn3"``, ``"bn123"``, any
  other combination such as ``"bn12"``, or ``"all"`` (every norm, stem and shortcuts included);
- BasicBlock: ``"bn1"`` (paper default), ``"bn12"`` (``"an_bn12"``), ``"bn2"`` or ``"all"``.

K (``num_mixtures``) is per stage, default (10, 10, 20, 20); the stem's norms take stage 1's K. These
choices reproduce the published parameter counts exactly (see tests/models/test_resnet.py).

The SE baselines use ``se_placement`` with the same slot names: an SE module
(:class:`~attentive_norm.layers.squeeze_excite.SqueezeExcite`, bias-free) right after each named norm,
before the activation (after ``bn3`` it is the standard SE position, before the residual sum). Its
reduction is 4 on the inner slots and 16 on the block output slot (``se_reductions``), as published.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from ..layers.attentive_norm import AttentiveBatchNorm2d
from ..layers.squeeze_excite import SqueezeExcite
from .features import build_model
from .registry import register_model

NormFactory = Callable[[int], nn.Module]
"""Builds a norm layer for a number of channels."""

DEFAULT_NUM_MIXTURES: tuple[int, int, int, int] = (10, 10, 20, 20)


def _conv3x3(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)


def _se(channels: int, reduction: int | None) -> nn.Module:
    return SqueezeExcite(channels, reduction) if reduction else nn.Identity()


class BasicBlock(nn.Module):
    """Two 3×3 convs (ResNet-18/34). ``norm_layers``: one factory per norm slot (bn1, bn2)."""

    expansion = 1
    num_norms = 2
    se_reductions = (4, 16)

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm_layers: Sequence[NormFactory] = (nn.BatchNorm2d, nn.BatchNorm2d),
        se_reductions: Sequence[int | None] = (None, None),
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layers[0](planes)
        self.se1 = _se(planes, se_reductions[0])
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = norm_layers[1](planes)
        self.se2 = _se(planes, se_reductions[1])
        self.downsample = downsample

    def zero_init_last(self) -> None:
        """Zero the last norm's scale so the block starts as the identity (plain BatchNorm only)."""
        if isinstance(self.bn2, nn.BatchNorm2d):
            nn.init.zeros_(self.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.se1(self.bn1(self.conv1(x))))
        out = self.se2(self.bn2(self.conv2(out)))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (carries the stride, v1.5), 1×1 expand ×4. One norm factory per slot (bn1-3)."""

    expansion = 4
    num_norms = 3
    se_reductions = (4, 4, 16)

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm_layers: Sequence[NormFactory] = (nn.BatchNorm2d, nn.BatchNorm2d, nn.BatchNorm2d),
        se_reductions: Sequence[int | None] = (None, None, None),
    ) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = norm_layers[0](planes)
        self.se1 = _se(planes, se_reductions[0])
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = norm_layers[1](planes)
        self.se2 = _se(planes, se_reductions[1])
        self.conv3 = _conv1x1(planes, out_chs)
        self.bn3 = norm_layers[2](out_chs)
        self.se3 = _se(out_chs, se_reductions[2])
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        """Zero bn3's scale so the block starts as the identity, as the paper does (plain BN only)."""
        if isinstance(self.bn3, nn.BatchNorm2d):
            nn.init.zeros_(self.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.se1(self.bn1(self.conv1(x))))
        out = self.relu(self.se2(self.bn2(self.conv2(out))))
        out = self.se3(self.bn3(self.conv3(out)))
        return self.relu(out + shortcut)


def slot_choices(block: type[BasicBlock | Bottleneck]) -> list[str]:
    """The block-slot names a placement may use: ``bn1``, ``bn2``, ``bn12``, ... for ``block``."""
    digits = "123"[: block.num_norms]
    combos = itertools.chain.from_iterable(
        itertools.combinations(digits, r) for r in range(1, len(digits) + 1)
    )
    return ["bn" + "".join(c) for c in combos]


def _parse_slots(
    value: str | None, block: type[BasicBlock | Bottleneck], what: str, allow_all: bool
) -> set[str]:
    """``"bn13"`` -> {"bn1", "bn3"}; ``"all"`` adds the stem and the shortcut norms."""
    if value is None:
        return set()
    choices = slot_choices(block)
    if value == "all" and allow_all:
        return {f"bn{d}" for d in "123"[: block.num_norms]} | {"stem", "downsample"}
    if value not in choices:
        valid = ", ".join([*choices, "all"] if allow_all else choices)
        raise ValueError(f"unknown {what} {value!r} for {block.__name__}; expected one of {valid} or None")
    return {f"bn{d}" for d in value[2:]}


class ResNet(nn.Module):
    """ResNet v1.5 with Attentive Normalization and/or SE at chosen slots, following the zoo contract.

    Args:
        block, layers: block class and number of blocks per stage, e.g. ``Bottleneck, (3, 4, 6, 3)``.
        num_classes: classifier outputs (``0``: no classifier).
        in_chans: input channels.
        deep_stem, avg_down: the "-d" variant's stem and average-pool shortcut.
        placement: the AN slots (see module docstring); ``None`` for the BatchNorm network.
        num_mixtures: K per stage (an int applies to all four).
        se_placement: the SE slots; ``None`` for none.
        se_reductions: SE reduction per block slot; default the block's (4 inside, 16 on its output).
        norm_layer: the plain norm (default ``nn.BatchNorm2d``).
        an_layer: the AN factory, called as ``an_layer(channels, num_mixtures=K)``; pass a
            ``functools.partial`` of :class:`AttentiveBatchNorm2d` to pick another attention head.
        zero_init_residual: zero the scale of each block's last norm when it is a plain BatchNorm.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        *,
        in_chans: int = 3,
        deep_stem: bool = False,
        avg_down: bool = False,
        placement: str | None = None,
        num_mixtures: int | Sequence[int] = DEFAULT_NUM_MIXTURES,
        se_placement: str | None = None,
        se_reductions: Sequence[int] | None = None,
        norm_layer: NormFactory = nn.BatchNorm2d,
        an_layer: Callable[..., nn.Module] = AttentiveBatchNorm2d,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must give the number of blocks of 4 stages, got {tuple(layers)}")
        mixtures = (num_mixtures,) * 4 if isinstance(num_mixtures, int) else tuple(num_mixtures)
        if len(mixtures) != 4:
            raise ValueError(f"num_mixtures must be an int or 4 ints (one per stage), got {num_mixtures!r}")
        an_slots = _parse_slots(placement, block, "placement", allow_all=True)
        se_slots = _parse_slots(se_placement, block, "se_placement", allow_all=False)
        se_reductions = tuple(se_reductions or block.se_reductions)
        self.num_classes = num_classes
        self.placement = placement
        self.se_placement = se_placement

        def norm(slot: str, stage: int) -> NormFactory:
            if slot in an_slots:
                return lambda chs: an_layer(chs, num_mixtures=mixtures[stage])
            return norm_layer

        stem_norm = norm("stem", 0)
        if deep_stem:
            self.conv1 = nn.Sequential(
                _conv3x3(in_chans, 32, stride=2),
                stem_norm(32),
                nn.ReLU(inplace=True),
                _conv3x3(32, 32),
                stem_norm(32),
                nn.ReLU(inplace=True),
                _conv3x3(32, 64),
            )
            self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2)
        else:
            self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = stem_norm(64)
        self.relu = nn.ReLU(inplace=True)

        inplanes, self.feature_info = 64, []
        for stage, (planes, num_blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if stage == 0 else 2
            out_chs = planes * block.expansion
            downsample = None
            if stride != 1 or inplanes != out_chs:
                shortcut_norm = norm("downsample", stage)(out_chs)
                if avg_down and stride != 1:
                    downsample = nn.Sequential(
                        nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False),
                        _conv1x1(inplanes, out_chs),
                        shortcut_norm,
                    )
                else:
                    downsample = nn.Sequential(_conv1x1(inplanes, out_chs, stride), shortcut_norm)
            norm_layers = [norm(f"bn{i + 1}", stage) for i in range(block.num_norms)]
            block_se = [r if f"bn{i + 1}" in se_slots else None for i, r in enumerate(se_reductions)]
            blocks = [block(inplanes, planes, stride, downsample, norm_layers, block_se)]
            blocks += [block(out_chs, planes, 1, None, norm_layers, block_se) for _ in range(num_blocks - 1)]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
            inplanes = out_chs
            self.feature_info.append(
                {"num_chs": out_chs, "reduction": 4 * 2**stage, "module": f"layer{stage + 1}"}
            )

        self.num_features = inplanes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """Kaiming-normal (fan_out, relu) convs. Norms keep their constructors' init (BatchNorm 1/0,
        AN its N(1, 0.1)/N(0, 0.1) mixture), which is the paper's; the classifier keeps PyTorch's."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    m.zero_init_last()

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.avgpool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _resnet(block: type[BasicBlock | Bottleneck], layers: Sequence[int], **kwargs: Any) -> nn.Module:
    return build_model(ResNet, block=block, layers=layers, **kwargs)


@register_model
def resnet34(num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """ResNet-34, BatchNorm."""
    return _resnet(BasicBlock, (3, 4, 6, 3), num_classes=num_classes, **kwargs)


@register_model
def resnet34_an(num_classes: int = 1000, placement: str = "bn1", **kwargs: Any) -> nn.Module:
    """ResNet-34 with AN on bn1 of every block ("an_bn1"); ``placement="bn12"`` for bn1 and bn2."""
    return _resnet(BasicBlock, (3, 4, 6, 3), num_classes=num_classes, placement=placement, **kwargs)


@register_model
def resnet50(num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """ResNet-50 (v1.5), BatchNorm: 25,557,032 parameters."""
    return _resnet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, **kwargs)


@register_model
def resnet50_an(num_classes: int = 1000, placement: str = "bn2", **kwargs: Any) -> nn.Module:
    """ResNet-50 with AN after each 3×3 conv: 25,755,420 parameters."""
    return _resnet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, placement=placement, **kwargs)


@register_model
def resnet50_se(num_classes: int = 1000, se_placement: str = "bn3", **kwargs: Any) -> nn.Module:
    """SE-ResNet-50 baseline: standard SE (r=16) on each block's output; ``se_placement="bn2"`` (r=4)
    or ``"bn123"`` for the paper's other SE variants."""
    return _resnet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, se_placement=se_placement, **kwargs)


@register_model
def resnet101(num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """ResNet-101 (v1.5), BatchNorm: 44,549,160 parameters."""
    return _resnet(Bottleneck, (3, 4, 23, 3), num_classes=num_classes, **kwargs)


@register_model
def resnet101_an(num_classes: int = 1000, placement: str = "bn2", **kwargs: Any) -> nn.Module:
    """ResNet-101 with AN after each 3×3 conv: 45,000,644 parameters."""
    return _resnet(Bottleneck, (3, 4, 23, 3), num_classes=num_classes, placement=placement, **kwargs)


@register_model
def resnet50d(num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """ResNet-50-D (deep stem, average-pool shortcut), BatchNorm: 25,576,264 parameters."""
    return _resnet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, deep_stem=True, avg_down=True, **kwargs)


@register_model
def resnet50d_an(num_classes: int = 1000, placement: str = "bn2", **kwargs: Any) -> nn.Module:
    """ResNet-50-D with AN after each 3×3 conv: 25,774,652 parameters."""
    return _resnet(
        Bottleneck,
        (3, 4, 6, 3),
        num_classes=num_classes,
        deep_stem=True,
        avg_down=True,
        placement=placement,
        **kwargs,
    )


@register_model
def resnet101d(num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """ResNet-101-D (deep stem, average-pool shortcut), BatchNorm: 44,568,392 parameters."""
    return _resnet(
        Bottleneck, (3, 4, 23, 3), num_classes=num_classes, deep_stem=True, avg_down=True, **kwargs
    )


@register_model
def resnet101d_an(num_classes: int = 1000, placement: str = "bn2", **kwargs: Any) -> nn.Module:
    """ResNet-101-D with AN after each 3×3 conv: 45,019,876 parameters."""
    return _resnet(
        Bottleneck,
        (3, 4, 23, 3),
        num_classes=num_classes,
        deep_stem=True,
        avg_down=True,
        placement=placement,
        **kwargs,
    )
