"""COCO evaluation of a detector with pycocotools' ``COCOeval``: box and mask AP, AP50, AP75, per size."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor, nn

from .coco import Target, batches, box_mask, clipped_box, usable_segmentation

METRICS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
"""The first six numbers of ``COCOeval.stats``, in percent."""

IOU_TYPES: dict[str, str] = {"bbox": "box", "segm": "mask"}


def to_coco_results(
    outputs: Iterable[Mapping[str, Tensor]], image_ids: Iterable[int], label_to_cat_id: Mapping[int, int]
) -> list[dict]:
    """Detections as COCO result dicts: ``bbox`` [x, y, w, h], ``score``, ``category_id`` and, when the
    model predicts masks (probabilities N×1×H×W), ``segmentation`` as compressed RLE of ``mask > 0.5``."""
    results = []
    for out, image_id in zip(outputs, image_ids, strict=True):
        boxes = out["boxes"].detach().cpu().double()
        boxes[:, 2:] -= boxes[:, :2]
        scores = out["scores"].detach().cpu().tolist()
        labels = out["labels"].detach().cpu().tolist()
        rles = []
        if "masks" in out:
            binary = (out["masks"].detach().cpu()[:, 0] > 0.5).numpy().astype(np.uint8)
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for i, (box, score, label) in enumerate(zip(boxes.tolist(), scores, labels)):
            result = {
                "image_id": int(image_id),
                "category_id": label_to_cat_id[int(label)],
                "bbox": [round(v, 2) for v in box],
                "score": float(score),
            }
            if rles:
                rle = rles[i]
                result["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            results.append(result)
    return results


@torch.inference_mode()
def predict(
    model: nn.Module, loader: Iterable[tuple[list[Tensor], list[Target], int]], device: torch.device
) -> tuple[list[dict], list[int]]:
    """Run ``model`` (in eval mode) over ``loader``; returns the raw COCO results and the image ids
    (unreadable images, left out by the loader, are not evaluated)."""
    was_training = model.training
    model.eval()
    label_to_cat_id = loader.dataset.label_to_cat_id
    results, image_ids = [], []
    try:
        for images, targets, _ in batches(loader):
            if not images:
                continue
            ids = [int(t["image_id"]) for t in targets]
            outputs = model([im.to(device) for im in images])
            results += to_coco_results(outputs, ids, label_to_cat_id)
            image_ids += ids
    finally:
        model.train(was_training)
    return results, image_ids


def mask_ground_truth(coco_gt: COCO, image_ids: Iterable[int]) -> COCO:
    """``coco_gt`` with the masks the detector trains on: an annotation of ``image_ids`` without a usable
    segmentation (none, ``[]``, polygons of fewer than 3 points, an RLE of another size) gets its box as
    mask, as in training, and keeps only its usable polygons otherwise; COCOeval would crash on them."""
    changed: dict[int, dict] = {}  # by the annotation object's identity: ids may repeat in bad files
    for image_id in image_ids:
        info = coco_gt.imgs[image_id]
        height, width = int(info["height"]), int(info["width"])
        for ann in coco_gt.imgToAnns.get(image_id, []):
            segmentation = ann.get("segmentation")
            usable = usable_segmentation(segmentation, height, width)
            if usable is None:
                mask = box_mask(clipped_box(ann["bbox"], width, height), height, width)
                rle = mask_utils.encode(np.asfortranarray(mask))
                usable = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            if usable is not segmentation:
                changed[id(ann)] = {**ann, "segmentation": usable}
    if not changed:
        return coco_gt
    sanitised = COCO()
    sanitised.dataset = {
        **coco_gt.dataset,
        "annotations": [changed.get(id(a), a) for a in coco_gt.dataset["annotations"]],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        sanitised.createIndex()
    return sanitised


def coco_evaluate(
    coco_gt: COCO, results: list[dict], image_ids: Iterable[int], iou_types: Iterable[str] = ("bbox", "segm")
) -> dict[str, dict[str, float]]:
    """COCOeval on ``image_ids``; returns ``{"box": {"AP": .., "AP50": .., ...}, "mask": {...}}`` in percent,
    NaN where a size range has no ground truth.

    With no detections at all every AP is 0 (COCOeval cannot load an empty result list). Mask AP is
    measured against :func:`mask_ground_truth`.
    """
    image_ids = sorted(set(image_ids))
    metrics: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        if iou_type == "bbox":
            usable = [dict(r) for r in results]
        else:  # without the box, loadRes takes the mask area for the size ranges (as detectron2 does)
            usable = [{k: v for k, v in r.items() if k != "bbox"} for r in results if "segmentation" in r]
        if not usable:
            metrics[IOU_TYPES[iou_type]] = dict.fromkeys(METRICS, 0.0)
            continue
        gt = mask_ground_truth(coco_gt, image_ids) if iou_type == "segm" else coco_gt
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = gt.loadRes(usable)
            evaluator = COCOeval(gt, coco_dt, iou_type)
            evaluator.params.imgIds = image_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        # COCOeval reports -1 where a size range has no ground truth; keep it as NaN.
        stats = [100.0 * float(v) if v >= 0 else math.nan for v in evaluator.stats[: len(METRICS)]]
        metrics[IOU_TYPES[iou_type]] = dict(zip(METRICS, stats))
    return metrics


def format_ap_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """A plain-text table: one row per task (box, mask), one column per metric."""
    header = f"{'':6s}" + "".join(f"{m:>8s}" for m in METRICS)
    rows = [header]
    for task, values in metrics.items():
        cells = "".join(f"{'-':>8s}" if math.isnan(values[m]) else f"{values[m]:8.2f}" for m in METRICS)
        rows.append(f"{task:6s}{cells}")
    return "\n".join(rows)
