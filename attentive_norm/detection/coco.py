"""COCO-format instance segmentation data: checked loading of an instances JSON and a map-style dataset.

Bad input is handled before it reaches the model: a JSON that is not in COCO instances format (or whose
image ids are not integers) raises :class:`CocoFormatError` with what is wrong, and so does an image,
when loaded, whose size is not the JSON's; images whose files are missing, empty images and degenerate
boxes, and annotations of image ids the JSON lacks are skipped and counted in :attr:`CocoInstances.skipped`
(reported once, in one line). Images of any mode (grey, palette, CMYK, alpha, 16-bit) become 8-bit RGB.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from ..data.folder import DataError
from ..data.images import open_rgb

log = logging.getLogger(__name__)

Target = dict[str, Tensor]
T = TypeVar("T")


class CocoFormatError(DataError):
    """The annotation file is not a usable COCO instances JSON; the message says why."""


def _require(condition: bool, path: Path, message: str) -> None:
    if not condition:
        raise CocoFormatError(f"{path}: not a COCO instances annotation file: {message}")


def load_coco_instances(path: str | Path) -> COCO:
    """Read and check a COCO instances JSON; returns a pycocotools ``COCO`` index of it.

    Checks the structure the detector relies on (top-level ``images``/``annotations``/``categories``
    lists; ids, file names, sizes, category ids and 4-number boxes) and names the first offence.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CocoFormatError(f"{path}: not valid JSON ({e})") from e
    _require(isinstance(data, dict), path, f"expected a JSON object, got {type(data).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        hint = ""
        if isinstance(data.get("annotations"), list) and any("caption" in a for a in data["annotations"][:5]):
            hint = " (this looks like a COCO captions file)"
        _require(False, path, f"missing list(s) {missing}; found keys {sorted(data)}{hint}")
    for i, c in enumerate(data["categories"]):
        _require(
            isinstance(c, dict) and isinstance(c.get("id"), int), path, f"categories[{i}] has no integer 'id'"
        )
    _require(len(data["categories"]) > 0, path, "'categories' is empty")
    for i, im in enumerate(data["images"]):
        ok = isinstance(im, dict) and "id" in im and isinstance(im.get("file_name"), str)
        _require(ok, path, f"images[{i}] needs 'id' and 'file_name'")
        _require(_is_int(im["id"]), path, f"images[{i}] has id {im['id']!r}; image ids must be integers")
        ok = all(isinstance(im.get(k), int | float) for k in ("width", "height"))
        _require(ok, path, f"images[{i}] (id {im['id']}) needs numeric 'width' and 'height'")
    ids = [im["id"] for im in data["images"]]
    _require(len(set(ids)) == len(ids), path, "duplicate image ids")
    for i, a in enumerate(data["annotations"]):
        ok = isinstance(a, dict) and all(k in a for k in ("id", "image_id", "category_id"))
        _require(ok, path, f"annotations[{i}] needs 'id', 'image_id' and 'category_id'")
        ok = _is_int(a["image_id"])
        _require(ok, path, f"annotations[{i}] has image_id {a['image_id']!r}; image ids must be integers")
        box = a.get("bbox")
        ok = isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)
        _require(ok, path, f"annotations[{i}] (id {a['id']}) needs 'bbox' as [x, y, width, height]")
    for a in data["annotations"]:  # COCOeval needs both; some exporters leave them out
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def usable_segmentation(segmentation: Any, height: float, width: float) -> list | dict | None:
    """The part of a COCO segmentation the detector uses: its polygons of at least 3 points (the list
    itself if all are), or an RLE of the image's size; ``None`` if nothing is usable (the box is then the
    mask)."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        return segmentation if len(polygons) == len(segmentation) > 0 else polygons or None
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        return segmentation if list(segmentation["size"]) == [height, width] else None
    return None


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray | None:
    """A COCO segmentation (polygons, RLE or compressed RLE) as an H×W uint8 mask; ``None`` if unusable."""
    usable = usable_segmentation(segmentation, height, width)
    if usable is None:
        return None
    if isinstance(usable, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(usable, height, width))
    else:
        rle = mask_utils.frPyObjects(usable, height, width) if isinstance(usable["counts"], list) else usable
    with warnings.catch_warnings():  # pycocotools' numpy-2 "copy keyword" deprecation, harmless here
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(np.uint8)


def clipped_box(bbox: Sequence[float], width: float, height: float) -> list[float]:
    """A COCO box [x, y, w, h] as [x1, y1, x2, y2], clipped to the image."""
    x, y, w, h = bbox
    return [max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)]


def box_mask(box_xyxy: Sequence[float], height: int, width: int) -> np.ndarray:
    """The H×W uint8 mask of the pixels a clipped box (:func:`clipped_box`) touches: the mask of an
    annotation without a usable segmentation, in training and in evaluation alike."""
    mask = np.zeros((height, width), np.uint8)
    if all(math.isfinite(v) for v in box_xyxy):
        x1, y1, x2, y2 = box_xyxy
        mask[int(y1) : max(math.ceil(y2), 0), int(x1) : max(math.ceil(x2), 0)] = 1
    return mask


class CocoInstances(Dataset):
    """Images and instance targets of a COCO-format dataset, as torchvision's detection models take them.

    An item is ``(image, target)``: ``image`` a float 3×H×W tensor in [0, 1]; ``target`` a dict with
    ``boxes`` (N×4, x1 y1 x2 y2, pixels), ``labels`` (N, contiguous 1..C), ``masks`` (N×H×W uint8),
    ``image_id``, ``area`` and ``iscrowd``.

    Args:
        image_dir: folder the ``file_name`` entries are relative to.
        ann_file: the COCO instances JSON.
        train: training mode: drops crowd regions and images without a usable annotation, and flips
            horizontally with probability ``flip_prob``. Items are addressed as ``index`` or as
            ``(epoch, index)`` (the keys of ``attentive_norm.data.sampler.ShardSampler``); the flip is a
            function of ``(seed, epoch, index)``, so runs and resumes repeat exactly, whatever the
            number of processes and loader workers.
        min_box_size: boxes narrower or lower than this (pixels, after clipping to the image) are skipped.
    """

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path,
        *,
        train: bool = False,
        flip_prob: float = 0.5,
        min_box_size: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.coco = load_coco_instances(ann_file)
        self.train = train
        self.flip_prob = flip_prob if train else 0.0
        self.min_box_size = min_box_size
        self.seed = seed
        self.cat_ids = sorted(self.coco.cats)
        self.label_to_cat_id = {i + 1: c for i, c in enumerate(self.cat_ids)}
        self.cat_id_to_label = {c: i for i, c in self.label_to_cat_id.items()}
        self.class_names = [self.coco.cats[c].get("name", str(c)) for c in self.cat_ids]
        self.skipped: Counter[str] = Counter()
        anns = self.coco.dataset["annotations"]
        if dangling := sum(a["image_id"] not in self.coco.imgs for a in anns):
            self.skipped["annotations of an unknown image id"] = dangling
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir}")
        self.image_ids = [i for i in sorted(self.coco.imgs) if self._keep_image(i)]
        if self.skipped:
            log.warning("%s: %s", Path(ann_file).name, self.skip_summary())
        if not self.image_ids:
            raise DataError(
                f"no usable images in {ann_file} with image folder {self.image_dir} ({self.skip_summary()})"
            )

    @property
    def categories(self) -> list[dict[str, Any]]:
        """``{"id", "name"}`` of every category, in label order (label 1 first): what a model trained on
        this data predicts, recorded in its checkpoints."""
        return [{"id": c, "name": n} for c, n in zip(self.cat_ids, self.class_names)]

    def skip_summary(self) -> str:
        """One line: what was skipped and how often."""
        if not self.skipped:
            return "nothing skipped"
        return "skipped " + ", ".join(f"{n} {what}" for what, n in sorted(self.skipped.items()))

    def _keep_image(self, image_id: int) -> bool:
        info = self.coco.imgs[image_id]
        if info["width"] < 1 or info["height"] < 1:
            self.skipped["images of size zero"] += 1
            return False
        if not (self.image_dir / info["file_name"]).is_file():
            if not self.skipped["images whose file is missing"]:
                log.warning(
                    "image file missing: %s (further ones are only counted)",
                    self.image_dir / info["file_name"],
                )
            self.skipped["images whose file is missing"] += 1
            return False
        if self.train and not self._annotations(image_id, info["width"], info["height"], count=True):
            self.skipped["training images without a usable annotation"] += 1
            return False
        return True

    def _annotations(self, image_id: int, width: float, height: float, count: bool = False) -> list[dict]:
        """The annotations of an image the detector can use; counts the rest when ``count`` is set."""
        kept = []
        for ann in self.coco.imgToAnns.get(image_id, []):
            reason = None
            x1, y1, x2, y2 = clipped_box(ann["bbox"], width, height)
            if not all(math.isfinite(v) for v in ann["bbox"]) or min(x2 - x1, y2 - y1) < self.min_box_size:
                reason = "degenerate boxes"
            elif ann["category_id"] not in self.cat_id_to_label:
                reason = "annotations with an unknown category"
            elif self.train and ann.get("iscrowd", 0):
                reason = "crowd regions (training)"
            if reason is None:
                kept.append({**ann, "bbox_xyxy": [x1, y1, x2, y2]})
            elif count:
                self.skipped[reason] += 1
        return kept

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of item ``index``; a clear error for an unreadable file.

        Raises :class:`CocoFormatError` for an image whose size is not the JSON's ``width`` and
        ``height``: its polygons and RLEs were drawn for the JSON's size, so its masks would be wrong.
        """
        info = self.coco.imgs[self.image_ids[index]]
        path = self.image_dir / info["file_name"]
        try:
            image = open_rgb(path)
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"cannot read image {path}: {e}") from e
        if image.size != (info["width"], info["height"]):
            raise CocoFormatError(
                f"{self.ann_file}: image {path} is {image.width}x{image.height} pixels, but the file says "
                f"width {info['width']}, height {info['height']}; correct its entry (id {info['id']})"
            )
        return image

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Target] | None:
        """The image tensor and its target; ``None`` for an image file that cannot be decoded (logged
        with its path, then left out and counted by :func:`collate` and the training loop). An image of
        another size than the JSON says is a :class:`CocoFormatError` (see :meth:`load_image`)."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image_id = self.image_ids[index]
        try:
            image = self.load_image(index)
        except CocoFormatError:  # the JSON is wrong, not this file: skipping would hide it
            raise
        except DataError as e:
            log.warning("skipping: %s", e)
            return None
        width, height = image.size
        anns = self._annotations(image_id, width, height)
        masks = []
        for ann in anns:
            mask = decode_segmentation(ann.get("segmentation"), height, width)
            masks.append(box_mask(ann["bbox_xyxy"], height, width) if mask is None else mask)
        target = {
            "boxes": torch.tensor([a["bbox_xyxy"] for a in anns], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks))
            if masks
            else torch.zeros(0, height, width, dtype=torch.uint8),
            "image_id": torch.tensor(image_id),
            "area": torch.tensor([float(a.get("area", 0.0)) for a in anns], dtype=torch.float32),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
        }
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        tensor = pixels.float().div_(255)
        if self.flip_prob > 0 and np.random.default_rng([self.seed, epoch, index]).random() < self.flip_prob:
            tensor, target = hflip(tensor, target)
        return tensor, target


def hflip(image: Tensor, target: Target) -> tuple[Tensor, Target]:
    """Mirror an image and its boxes and masks left to right."""
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes, "masks": target["masks"].flip(-1)}


def batches(loader: Iterable[T]) -> Iterator[T]:
    """The batches of ``loader``. A :class:`DataError` raised in a loader worker is re-raised with its own
    one-line message: torch re-raises it with the worker's traceback in front of that message."""
    try:
        yield from loader
    except DataError as e:
        lines = str(e).splitlines()
        if len(lines) < 2 or not lines[0].startswith("Caught "):
            raise
        raise type(e)(lines[-1].split(": ", 1)[-1]) from e


def collate(batch: Sequence[tuple[Tensor, Target] | None]) -> tuple[list[Tensor], list[Target], int]:
    """Batches as lists (torchvision's detectors take images of different sizes), and the number of
    unreadable images left out of the batch."""
    kept = [item for item in batch if item is not None]
    return [image for image, _ in kept], [target for _, target in kept], len(batch) - len(kept)
