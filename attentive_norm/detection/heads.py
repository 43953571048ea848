"""RoI heads of the paper's Mask R-CNN: the "4conv1fc" box head and the 4-conv mask head, with their norms.

Head norms of the paper's COCO experiments: ``"none"``, ``"bn"``, ``"gn"`` (GroupNorm, 32 groups) and
``"an_gn"``, the paper's "AN (w/ GN)" head: GroupNorm-based Attentive Normalization after each box-head
conv, with K = 10, 10, 20, 20 mixture components, while the FPN and the mask head use GroupNorm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from torch import Tensor, nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads

from ..layers import AttentiveGroupNorm

HEAD_NORMS: tuple[str, ...] = ("none", "bn", "gn", "an_gn")
"""Norms a head conv may use; ``an_gn`` only in the box head."""

AN_HEAD_MIXTURES: tuple[int, ...] = (10, 10, 20, 20)
"""K of the AN (w/ GN) layers after the four box-head convs, as published."""


def norm_layer(kind: str, num_groups: int = 32) -> Callable[[int], nn.Module] | None:
    """A ``channels -> norm`` factory for ``"none"`` (``None``), ``"bn"`` or ``"gn"``."""
    if kind == "none":
        return None
    if kind == "bn":
        return nn.BatchNorm2d
    if kind == "gn":
        return partial(nn.GroupNorm, num_groups)
    raise ValueError(f"norm must be one of 'none', 'bn', 'gn' here, got {kind!r}")


class ConvFCBoxHead(nn.Module):
    """The "4conv1fc" box head: convs 3×3 (each followed by a norm and ReLU), flatten, fc + ReLU.

    Args:
        in_channels: channels of the pooled RoI features (the FPN width).
        resolution: side of the pooled RoI features (7 in Mask R-CNN).
        conv_channels, num_convs: width and number of the 3×3 convs (256, 4).
        fc_channels, num_fcs: width and number of the fully connected layers (1024, 1).
        norm: one of :data:`HEAD_NORMS`.
        num_groups: groups of the GroupNorm (and of the GroupNorm-based AN).
        num_mixtures: K of the AN layers, one per conv (``norm="an_gn"`` only).

    ``out_channels`` is what the box predictor takes (``fc_channels``).
    """

    def __init__(
        self,
        in_channels: int,
        resolution: int = 7,
        *,
        conv_channels: int = 256,
        num_convs: int = 4,
        fc_channels: int = 1024,
        num_fcs: int = 1,
        norm: str = "none",
        num_groups: int = 32,
        num_mixtures: Sequence[int] = AN_HEAD_MIXTURES,
    ) -> None:
        super().__init__()
        if norm not in HEAD_NORMS:
            raise ValueError(f"box head norm must be one of {HEAD_NORMS}, got {norm!r}")
        if norm == "an_gn" and len(num_mixtures) != num_convs:
            raise ValueError(f"need one K per conv: {num_convs} convs, num_mixtures={tuple(num_mixtures)}")
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(num_convs):
            layers.append(nn.Conv2d(channels, conv_channels, 3, padding=1, bias=norm == "none"))
            if norm == "an_gn":
                layers.append(AttentiveGroupNorm(conv_channels, num_groups, num_mixtures[i]))
            elif norm != "none":
                layers.append(norm_layer(norm, num_groups)(conv_channels))
            layers.append(nn.ReLU(inplace=True))
            channels = conv_channels
        layers.append(nn.Flatten())
        channels *= resolution * resolution
        for _ in range(num_fcs):
            layers += [nn.Linear(channels, fc_channels), nn.ReLU(inplace=True)]
            channels = fc_channels
        self.layers = nn.Sequential(*layers)
        self.out_channels = channels
        for m in self.layers.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def mask_head(in_channels: int, channels: int = 256, num_convs: int = 4, norm: str = "none") -> MaskRCNNHeads:
    """The Mask R-CNN mask head: ``num_convs`` 3×3 convs with an optional BN/GN (torchvision's module)."""
    return MaskRCNNHeads(in_channels, [channels] * num_convs, 1, norm_layer=norm_layer(norm))
