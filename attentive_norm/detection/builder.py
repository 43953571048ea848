"""Mask R-CNN with a zoo backbone, an FPN and the paper's heads, on torchvision's detection models."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from .backbone import build_backbone
from .cascade import AgnosticBoxPredictor, CascadeRoIHeads
from .heads import AN_HEAD_MIXTURES, HEAD_NORMS, ConvFCBoxHead, mask_head


def maskrcnn(
    backbone: str = "resnet50_an",
    num_classes: int = 80,
    *,
    pretrained_backbone: str | Path | None = None,
    head_norm: str = "none",
    fpn_norm: str | None = None,
    mask_norm: str | None = None,
    an_mixtures: Sequence[int] = AN_HEAD_MIXTURES,
    fpn_channels: int = 256,
    box_conv_channels: int = 256,
    box_fc_channels: int = 1024,
    box_convs: int = 4,
    box_fcs: int = 1,
    mask_channels: int = 256,
    frozen_stages: int = 1,
    norm_eval: bool = True,
    out_indices: Sequence[int] | None = None,
    anchor_sizes: Sequence[float] | None = None,
    canonical_scale: int = 224,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    backbone_kwargs: dict[str, Any] | None = None,
    cascade: bool = False,
    **maskrcnn_kwargs: Any,
) -> MaskRCNN:
    """The paper's Mask R-CNN FPN (its COCO experiments) as a torchvision ``MaskRCNN`` (or its Cascade
    variant).

    Args:
        backbone: zoo model name (``resnet50_an``, ``resnet101``, ... any model with ``feature_info``).
        num_classes: object classes, background not included (COCO: 80).
        pretrained_backbone: an ImageNet checkpoint of the zoo model (ours or the authors').
        head_norm: norm of the four box-head convs: ``"none"``, ``"bn"``, ``"gn"`` or ``"an_gn"`` (the
            paper's "AN (w/ GN)" head).
        fpn_norm, mask_norm: norms of the FPN and the mask-head convs (``"none"``, ``"bn"``, ``"gn"``);
            default GN for the ``gn`` and ``an_gn`` heads, BN for ``bn``, none otherwise.
        an_mixtures: K of the box head's AN layers, one per conv.
        box_convs, box_fcs: convs and fully connected layers of the box head (4 and 1: "4conv1fc";
            0 and 2: the common "2fc" head).
        frozen_stages, norm_eval: backbone freezing, see :meth:`ZooFPNBackbone.freeze`.
        anchor_sizes: one anchor size per map (FPN levels and the extra one); default 8 × stride
            (ResNet: 32 to 512, as in Mask R-CNN), with aspect ratios 0.5, 1, 2.
        canonical_scale: RoI size mapped to the 4th level (224 as in the FPN paper; smaller for tiny images).
        min_size, max_size: image resizing inside the model, (800, 1333) in the paper.
        backbone_kwargs: passed to the zoo builder.
        cascade: three box stages and three mask heads (:class:`CascadeRoIHeads`), each box head a
            4conv1fc head with ``head_norm``; otherwise Mask R-CNN's single stage.
        maskrcnn_kwargs: passed to ``torchvision.models.detection.MaskRCNN`` (RPN/RoI sampling, NMS, ...);
            a name it does not take (which it would silently ignore) is a ``ValueError``.
    """
    check_maskrcnn_kwargs(maskrcnn_kwargs)
    if head_norm not in HEAD_NORMS:
        raise ValueError(f"head_norm must be one of {HEAD_NORMS}, got {head_norm!r}")
    derived = {"an_gn": "gn"}.get(head_norm, head_norm)
    fpn_norm = derived if fpn_norm is None else fpn_norm
    mask_norm = derived if mask_norm is None else mask_norm
    body = build_backbone(
        backbone,
        pretrained=pretrained_backbone,
        out_indices=out_indices,
        fpn_channels=fpn_channels,
        fpn_norm=fpn_norm,
        frozen_stages=frozen_stages,
        norm_eval=norm_eval,
        **(backbone_kwargs or {}),
    )
    shapes = body.output_shape()
    if anchor_sizes is None:
        anchor_sizes = [8 * s.stride for s in shapes.values()]
    if len(anchor_sizes) != len(shapes):
        raise ValueError(f"need one anchor size per map ({list(shapes)}), got {list(anchor_sizes)}")
    anchors = AnchorGenerator(tuple((float(s),) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * len(shapes))
    levels = body.level_names
    stages = 3 if cascade else 1
    box_heads = [
        ConvFCBoxHead(
            fpn_channels,
            7,
            conv_channels=box_conv_channels,
            num_convs=box_convs,
            fc_channels=box_fc_channels,
            num_fcs=box_fcs,
            norm=head_norm,
            num_mixtures=an_mixtures,
        )
        for _ in range(stages)
    ]
    mask_heads = [mask_head(fpn_channels, mask_channels, norm=mask_norm) for _ in range(stages)]
    mask_predictors = [
        MaskRCNNPredictor(mask_channels, mask_channels, num_classes + 1) for _ in range(stages)
    ]
    model = MaskRCNN(
        body,
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
        box_roi_pool=MultiScaleRoIAlign(levels, 7, 2, canonical_scale=canonical_scale),
        box_head=box_heads[0],
        box_predictor=_box_predictor(box_heads[0].out_channels, num_classes + 1),
        mask_roi_pool=MultiScaleRoIAlign(levels, 14, 2, canonical_scale=canonical_scale),
        mask_head=mask_heads[0],
        mask_predictor=mask_predictors[0],
        **maskrcnn_kwargs,
    )
    if cascade:
        heads = model.roi_heads
        model.roi_heads = CascadeRoIHeads(
            heads.box_roi_pool,
            box_heads,
            [AgnosticBoxPredictor(h.out_channels, num_classes + 1) for h in box_heads],
            heads.mask_roi_pool,
            mask_heads,
            mask_predictors,
            batch_size_per_image=heads.fg_bg_sampler.batch_size_per_image,
            positive_fraction=heads.fg_bg_sampler.positive_fraction,
            score_thresh=heads.score_thresh,
            nms_thresh=heads.nms_thresh,
            detections_per_img=heads.detections_per_img,
        )
    return model


BUILT_HERE: frozenset[str] = frozenset(
    {"backbone", "num_classes", "min_size", "max_size", "rpn_anchor_generator", "rpn_head", "box_roi_pool",
     "box_head", "box_predictor", "mask_roi_pool", "mask_head", "mask_predictor"}
)  # fmt: skip
"""``MaskRCNN`` arguments :func:`maskrcnn` sets itself."""


def maskrcnn_settings() -> list[str]:
    """The keyword arguments of torchvision's ``MaskRCNN`` (with ``FasterRCNN``'s and its image
    transform's, which it passes on) that ``maskrcnn_kwargs`` may set."""
    names = set()
    for function in (MaskRCNN.__init__, FasterRCNN.__init__, GeneralizedRCNNTransform.__init__):
        for name, parameter in inspect.signature(function).parameters.items():
            if parameter.kind is not parameter.VAR_KEYWORD and name != "self":
                names.add(name)
    return sorted(names - BUILT_HERE)


def check_maskrcnn_kwargs(kwargs: dict[str, Any]) -> None:
    """``ValueError`` naming a key torchvision would ignore (its ``**kwargs`` swallow any name) or one
    :func:`maskrcnn` sets itself, with the closest valid name."""
    valid = maskrcnn_settings()
    for key in kwargs:
        if key in BUILT_HERE:
            raise ValueError(f"maskrcnn_kwargs: {key!r} is set by maskrcnn() itself (see its arguments)")
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(valid)}"
            raise ValueError(f"maskrcnn_kwargs: torchvision's MaskRCNN takes no {key!r}{hint}")


def _box_predictor(in_channels: int, num_classes: int) -> FastRCNNPredictor:
    """torchvision's predictor with mmdetection's init (the authors' code base): N(0, 0.01) class
    scores, N(0, 0.001) box deltas, zero biases, so training starts from uniform class scores."""
    predictor = FastRCNNPredictor(in_channels, num_classes)
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    nn.init.zeros_(predictor.cls_score.bias)
    nn.init.zeros_(predictor.bbox_pred.bias)
    return predictor
