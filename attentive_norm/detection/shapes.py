"""A small synthetic COCO-format instance segmentation dataset: coloured shapes on a noisy background.

Each image holds a few non-overlapping circles, squares and triangles; every shape is drawn as a
polygon, and that polygon is its segmentation, so masks are exact. Used by the embedded default of
``attentive-norm detect train`` and by the tests.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle")


@dataclass(frozen=True)
class ShapesSplit:
    """Where a generated split lives: its image folder and its COCO instances JSON."""

    image_dir: Path
    ann_file: Path


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape of circumradius ``r`` centred at (cx, cy)."""
    corners = {"circle": 24, "square": 4, "triangle": 3}[kind]
    start = angle if kind != "circle" else 0.0
    return [
        (
            cx + r * math.cos(start + 2 * math.pi * i / corners),
            cy + r * math.sin(start + 2 * math.pi * i / corners),
        )
        for i in range(corners)
    ]


def _draw_image(
    rng: np.random.Generator, size: int, max_objects: int, min_radius: float, max_radius: float
) -> tuple[Image.Image, list[tuple[int, list[tuple[float, float]]]]]:
    """One image and its shapes, as (class index, polygon) pairs."""
    background = rng.integers(0, 60, 3)
    pixels = np.clip(background + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    placed: list[tuple[float, float, float]] = []
    shapes = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            r = float(rng.uniform(min_radius, max_radius))
            cx, cy = (float(v) for v in rng.uniform(r + 1, size - r - 1, 2))
            if all(math.hypot(cx - x, cy - y) > r + q + 2 for x, y, q in placed):
                break
        else:
            continue
        cls = int(rng.integers(len(SHAPE_CLASSES)))
        poly = _polygon(SHAPE_CLASSES[cls], cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
        draw.polygon(poly, fill=tuple(int(c) for c in rng.integers(110, 256, 3)))
        placed.append((cx, cy, r))
        shapes.append((cls, poly))
    return image, shapes


def _coco_annotation(ann_id: int, image_id: int, cls: int, poly: list[tuple[float, float]]) -> dict:
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    x0, y0 = min(xs), min(ys)
    # Shoelace formula: the polygon's area.
    area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(poly))))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cls + 1,
        "bbox": [x0, y0, max(xs) - x0, max(ys) - y0],
        "area": area,
        "iscrowd": 0,
        "segmentation": [[round(c, 2) for p in poly for c in p]],
    }


def make_shapes_split(
    root: str | Path,
    split: str,
    num_images: int,
    *,
    image_size: int = 96,
    max_objects: int = 3,
    min_radius: float = 10.0,
    max_radius: float = 24.0,
    seed: int = 0,
) -> ShapesSplit:
    """Write ``root/<split>/*.png`` and ``root/<split>.json`` (COCO instances format); returns the paths.

    Deterministic for a given ``seed``; an existing split with the same JSON is left as it is.
    """
    root = Path(root)
    image_dir, ann_file = root / split, root / f"{split}.json"
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    drawn = []
    for image_id in range(1, num_images + 1):
        image, shapes = _draw_image(rng, image_size, max_objects, min_radius, max_radius)
        file_name = f"{image_id:06d}.png"
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        for cls, poly in shapes:
            annotations.append(_coco_annotation(len(annotations) + 1, image_id, cls, poly))
        drawn.append((file_name, image))
    dataset = {
        "info": {"description": f"attentive-norm synthetic shapes, split {split!r}, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPE_CLASSES)
        ],
    }
    text = json.dumps(dataset)
    if (
        ann_file.is_file()
        and ann_file.read_text() == text
        and all((image_dir / f).is_file() for f, _ in drawn)
    ):
        return ShapesSplit(image_dir, ann_file)
    image_dir.mkdir(parents=True, exist_ok=True)
    for file_name, image in drawn:
        image.save(image_dir / file_name)
    tmp = ann_file.with_suffix(".json.tmp")
    tmp.write_text(text)
    tmp.replace(ann_file)
    return ShapesSplit(image_dir, ann_file)
