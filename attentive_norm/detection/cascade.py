"""Cascade Mask R-CNN RoI heads (Cai and Vasconcelos, CVPR 2018) on torchvision's Mask R-CNN pieces.

Three box stages, each trained on the boxes the previous stage refined, with rising IoU thresholds
(0.5, 0.6, 0.7), finer box-coder weights ((10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)),
class-agnostic box regression and loss weights (1, 0.5, 0.25); one mask head per stage, trained on
that stage's positives. At inference the classification logits of the stages are averaged, the boxes
are the last stage's, and the mask is the mean of the stages' mask probabilities (mmdetection's
Cascade Mask R-CNN, which the paper's 20e rows use).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss
from torchvision.ops import boxes as box_ops

STAGE_IOUS: tuple[float, ...] = (0.5, 0.6, 0.7)
STAGE_BOX_WEIGHTS: tuple[tuple[float, float, float, float], ...] = (
    (10.0, 10.0, 5.0, 5.0),
    (20.0, 20.0, 10.0, 10.0),
    (30.0, 30.0, 15.0, 15.0),
)
STAGE_LOSS_WEIGHTS: tuple[float, ...] = (1.0, 0.5, 0.25)


class AgnosticBoxPredictor(nn.Module):
    """Class scores (background included) and one class-agnostic box regression per RoI."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class CascadeRoIHeads(RoIHeads):
    """Drop-in for torchvision's ``RoIHeads`` in ``MaskRCNN``: one box head, box predictor, mask head and
    mask predictor per stage (``len(box_heads)`` stages, 3 in the paper)."""

    def __init__(
        self,
        box_roi_pool: nn.Module,
        box_heads: Sequence[nn.Module],
        box_predictors: Sequence[AgnosticBoxPredictor],
        mask_roi_pool: nn.Module,
        mask_heads: Sequence[nn.Module],
        mask_predictors: Sequence[nn.Module],
        *,
        stage_ious: Sequence[float] = STAGE_IOUS,
        stage_box_weights: Sequence[Sequence[float]] = STAGE_BOX_WEIGHTS,
        stage_loss_weights: Sequence[float] = STAGE_LOSS_WEIGHTS,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        stages = len(box_heads)
        sizes = {len(x) for x in (box_predictors, mask_heads, mask_predictors, stage_ious, stage_box_weights)}
        if sizes | {len(stage_loss_weights)} != {stages}:
            raise ValueError(f"every per-stage setting needs {stages} entries (one per box head)")
        super().__init__(
            box_roi_pool,
            None,
            None,
            stage_ious[0],
            stage_ious[0],
            batch_size_per_image,
            positive_fraction,
            tuple(stage_box_weights[-1]),
            score_thresh,
            nms_thresh,
            detections_per_img,
            mask_roi_pool=mask_roi_pool,
        )
        self.box_heads = nn.ModuleList(box_heads)
        self.box_predictors = nn.ModuleList(box_predictors)
        self.mask_heads = nn.ModuleList(mask_heads)
        self.mask_predictors = nn.ModuleList(mask_predictors)
        self.matchers = [det_utils.Matcher(iou, iou, allow_low_quality_matches=False) for iou in stage_ious]
        self.box_coders = [det_utils.BoxCoder(tuple(w)) for w in stage_box_weights]
        self.stage_loss_weights = tuple(stage_loss_weights)

    def has_mask(self) -> bool:
        return True

    def _sample(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]], stage: int
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Per image: sampled boxes (ground truth added), their matched ground-truth index, label, whether
        each is a ground-truth box, and its regression target for this stage."""
        matched, labels, is_gt = [], [], []
        proposals = [torch.cat([p, t["boxes"]]) for p, t in zip(proposals, targets)]
        for boxes, target in zip(proposals, targets):
            gt = target["boxes"]
            flags = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
            flags[len(boxes) - len(gt) :] = True
            if gt.numel() == 0:
                idx = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
                lab = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
            else:
                idx = self.matchers[stage](box_ops.box_iou(gt, boxes))
                lab = target["labels"][idx.clamp(min=0)].clone()
                lab[idx == det_utils.Matcher.BELOW_LOW_THRESHOLD] = 0
                idx = idx.clamp(min=0)
            matched.append(idx)
            labels.append(lab)
            is_gt.append(flags)
        keep = [torch.where(pos | neg)[0] for pos, neg in zip(*self.fg_bg_sampler(labels))]
        proposals = [p[k] for p, k in zip(proposals, keep)]
        matched = [m[k] for m, k in zip(matched, keep)]
        labels = [lab[k] for lab, k in zip(labels, keep)]
        is_gt = [g[k] for g, k in zip(is_gt, keep)]
        regression = []
        for boxes, idx, target in zip(proposals, matched, targets):
            gt = target["boxes"] if target["boxes"].numel() else torch.zeros_like(boxes[:1])
            regression.append(self.box_coders[stage].encode_single(gt[idx], boxes))
        return proposals, matched, labels, is_gt, regression

    def _box_stage(
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]],
        stage: int,
    ) -> tuple[Tensor, Tensor]:
        x = self.box_heads[stage](self.box_roi_pool(features, boxes, image_shapes))
        return self.box_predictors[stage](x)

    def _decode(
        self, deltas: Tensor, boxes: list[Tensor], image_shapes: list[tuple[int, int]], stage: int
    ) -> list[Tensor]:
        decoded = self.box_coders[stage].decode(deltas.detach(), boxes).reshape(-1, 4)
        parts = decoded.split([len(b) for b in boxes])
        return [box_ops.clip_boxes_to_image(b, s) for b, s in zip(parts, image_shapes)]

    def _mask_logits(
        self, features: dict[str, Tensor], boxes: list[Tensor], shapes: list, stage: int
    ) -> Tensor:
        x = self.mask_heads[stage](self.mask_roi_pool(features, boxes, shapes))
        return self.mask_predictors[stage](x)

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("targets are needed in training")
            return [], self._losses(features, proposals, image_shapes, targets)
        return self._detect(features, proposals, image_shapes), {}

    def _losses(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        losses = {}
        for stage, weight in enumerate(self.stage_loss_weights):
            boxes, matched, labels, is_gt, regression = self._sample(proposals, targets, stage)
            class_logits, deltas = self._box_stage(features, boxes, image_shapes, stage)
            all_labels = torch.cat(labels)
            positive = torch.where(all_labels > 0)[0]
            box_loss = F.smooth_l1_loss(
                deltas[positive], torch.cat(regression)[positive], beta=1 / 9, reduction="sum"
            ) / max(all_labels.numel(), 1)
            losses[f"loss_classifier_s{stage}"] = weight * F.cross_entropy(class_logits, all_labels)
            losses[f"loss_box_reg_s{stage}"] = weight * box_loss
            pos_boxes = [b[lab > 0] for b, lab in zip(boxes, labels)]
            pos_matched = [m[lab > 0] for m, lab in zip(matched, labels)]
            mask_logits = self._mask_logits(features, pos_boxes, image_shapes, stage)
            mask_loss = maskrcnn_loss(
                mask_logits,
                pos_boxes,
                [t["masks"] for t in targets],
                [t["labels"] for t in targets],
                pos_matched,
            )
            losses[f"loss_mask_s{stage}"] = weight * mask_loss
            if stage + 1 < len(self.stage_loss_weights):  # the next stage learns from the refined boxes
                refined = self._decode(deltas, boxes, image_shapes, stage)
                proposals = [r[~g] for r, g in zip(refined, is_gt)]
        return losses

    def _detect(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        logits = []
        boxes = proposals
        for stage in range(len(self.box_heads)):
            class_logits, deltas = self._box_stage(features, boxes, image_shapes, stage)
            logits.append(class_logits)
            if stage + 1 < len(self.box_heads):
                boxes = self._decode(deltas, boxes, image_shapes, stage)
        mean_logits = torch.stack(logits).mean(0)
        num_classes = mean_logits.shape[-1]
        # postprocess_detections decodes with the last stage's coder, one (shared) box per class.
        det_boxes, scores, labels = self.postprocess_detections(
            mean_logits, deltas.repeat(1, num_classes), boxes, image_shapes
        )
        probs = []
        for stage in range(len(self.mask_heads)):
            mask_logits = self._mask_logits(features, det_boxes, image_shapes, stage)
            index = torch.arange(mask_logits.shape[0], device=mask_logits.device)
            probs.append(mask_logits[index, torch.cat(labels)].sigmoid()[:, None])
        masks = torch.stack(probs).mean(0).split([len(b) for b in det_boxes])
        return [
            {"boxes": b, "scores": s, "labels": lab, "masks": m}
            for b, s, lab, m in zip(det_boxes, scores, labels, masks)
        ]
