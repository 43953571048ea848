"""Predicted boxes and masks drawn on images, saved as PNG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from .coco import CocoInstances

_PALETTE: tuple[str, ...] = (
    "#e6194b",
    "#3cb44b",
    "#ffe119",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#46f0f0",
    "#f032e6",
)


def draw_predictions(
    image: Tensor,
    output: Mapping[str, Tensor],
    class_names: Sequence[str],
    score_threshold: float = 0.5,
    min_side: int = 320,
) -> Tensor:
    """``image`` (3×H×W in [0, 1]) with the detections scoring at least ``score_threshold``: masks
    (``mask > 0.5``) blended in, boxes labelled ``class score``. Small images are enlarged by an integer
    factor to at least ``min_side`` pixels so the labels stay readable. Returns uint8 3×H'×W'."""
    scale = max(1, -(-min_side // max(image.shape[-2:])))
    canvas = (image.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    canvas = canvas.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    keep = output["scores"].detach().cpu() >= score_threshold
    labels = output["labels"].detach().cpu()[keep].tolist()
    if not labels:
        return canvas
    colors = [_PALETTE[label % len(_PALETTE)] for label in labels]
    if "masks" in output:
        masks = output["masks"].detach().cpu()[keep].float()
        masks = F.interpolate(masks, scale_factor=scale, mode="nearest")[:, 0] > 0.5
        canvas = draw_segmentation_masks(canvas, masks, alpha=0.45, colors=colors)
    scores = output["scores"].detach().cpu()[keep].tolist()
    names = [
        f"{class_names[label - 1] if 0 < label <= len(class_names) else label} {s:.2f}"
        for label, s in zip(labels, scores)
    ]
    boxes = output["boxes"].detach().cpu()[keep] * scale
    return draw_bounding_boxes(canvas, boxes, labels=names, colors=colors, width=2)


@torch.inference_mode()
def save_visualizations(
    model: nn.Module,
    dataset: CocoInstances,
    out_dir: str | Path,
    *,
    num_images: int = 4,
    device: torch.device | str = "cpu",
    score_threshold: float = 0.5,
) -> list[Path]:
    """Draw ``model``'s predictions on the first ``num_images`` items of ``dataset``; returns the PNGs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    paths = []
    try:
        for index in range(min(num_images, len(dataset))):
            item = dataset[index]
            if item is None:  # unreadable image, already reported by the dataset
                continue
            image, target = item
            output = model([image.to(device)])[0]
            drawn = draw_predictions(image, output, dataset.class_names, score_threshold)
            path = out_dir / f"pred_{int(target['image_id']):06d}.png"
            Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(path)
            paths.append(path)
    finally:
        model.train(was_training)
    return paths
