"""Odd and broken data never crashes a run mid-epoch and is never silent: images of every mode become 8-bit
RGB with their content, unreadable ones are skipped, named and counted in the epoch summary, and COCO
annotations of unknown images are counted. (Empty class folders and other layout problems are named
before training: tests/data/test_loading.py; degenerate COCO boxes: tests/detection/test_coco.py.)
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attentive_norm.cli.main import main
from attentive_norm.data import folder
from attentive_norm.data.images import open_rgb
from attentive_norm.detection.coco import CocoInstances
from attentive_norm.detection.shapes import make_shapes_split


def palette_with_transparency() -> Image.Image:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    image.info["transparency"] = 1
    return image


# file name -> (image, expected RGB); the file keeps the odd mode (checked on reopening)
ODD = {
    "grey.png": (Image.new("L", (8, 8), 128), (128, 128, 128)),
    "bilevel.png": (Image.new("1", (8, 8), 1), (255, 255, 255)),
    "palette.png": (palette_with_transparency(), (10, 20, 30)),
    "rgba.png": (Image.new("RGBA", (8, 8), (10, 20, 30, 0)), (10, 20, 30)),
    "grey_alpha.png": (Image.new("LA", (8, 8), (128, 7)), (128, 128, 128)),
    "cmyk.jpg": (Image.new("CMYK", (8, 8), (0, 255, 255, 0)), (255, 0, 0)),
    "sixteen_bit.png": (Image.fromarray(np.full((8, 8), 128 * 257, np.uint16)), (128, 128, 128)),
}


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def noise(seed: int, size: int = 16) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8))


def cut_jpeg(seed: int) -> bytes:
    """A JPEG cut inside its image data: PIL's verify() passes it, decoding fails."""
    data = encoded(noise(seed, 64), "JPEG")
    return data[: len(data) // 2]


BROKEN = {
    "truncated.png": encoded(noise(1), "PNG")[:300],
    "truncated.jpg": cut_jpeg(2),
    "garbage.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    "empty.jpg": b"",
}


@pytest.mark.parametrize("name", ODD)
def test_every_image_mode_becomes_rgb_with_its_content(tmp_path: Path, name: str) -> None:
    image, rgb = ODD[name]
    path = tmp_path / name
    image.save(path)
    with Image.open(path) as stored:
        assert stored.mode == image.mode
    loaded = open_rgb(path)
    assert loaded.mode == "RGB" and loaded.size == image.size
    assert np.abs(np.asarray(loaded, np.int16) - rgb).max() <= 3  # JPEG rounding


def make_folder(root: Path) -> None:
    """20 training images: 5 plain per class, the odd modes and the broken files; 6 validation images."""
    for split, count in (("train", 5), ("val", 3)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                noise(10 * i + ord(c)).save(root / split / c / f"{i}.png")
    for name, (image, _) in ODD.items():
        image.save(root / "train" / "a" / name)
    for name, data in BROKEN.items():
        (root / "train" / "b" / name).write_bytes(data)
    (root / "val" / "b" / "3.png").write_bytes(BROKEN["truncated.png"])


@pytest.mark.slow
def test_training_skips_names_and_counts_unreadable_images(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(folder, "VERIFY_UP_TO", 0)  # as in a large dataset: met while training
    make_folder(tmp_path / "data")
    argv = ["train", "--data", tmp_path / "data", "--epochs", "2", "--batch-size", "4", "--image-size", "12"]
    argv += ["--threads", "1", "--workers", "0", "--no-progress", "--output", tmp_path, "--name", "run"]
    assert main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    named = {line.split(": ", 1)[1].split(" (")[0] for line in out.splitlines() if "unreadable image" in line}
    expected = {str(tmp_path / "data" / "train" / "b" / name) for name in BROKEN}
    assert named == expected  # every odd-mode image was trained on; every broken one named
    rows = list(csv.DictReader((tmp_path / "run" / "summary.csv").read_text().splitlines()))
    assert [int(r["skipped"]) for r in rows] == [len(BROKEN) + 1] * 2  # + the broken validation image


def test_coco_annotations_of_unknown_images_are_counted(tmp_path: Path) -> None:
    shapes = make_shapes_split(tmp_path, "train", 4, image_size=64, seed=3)
    data = json.loads(shapes.ann_file.read_text())
    data["annotations"].append({"id": 999, "image_id": 12345, "category_id": 1, "bbox": [1, 1, 9, 9]})
    shapes.ann_file.write_text(json.dumps(data))
    first = shapes.image_dir / data["images"][0]["file_name"]
    grey = np.asarray(Image.open(first).convert("L"), np.uint16) * 257
    Image.fromarray(grey).save(first)  # a 16-bit grey image among the RGB ones
    dataset = CocoInstances(shapes.image_dir, shapes.ann_file, train=True)
    assert dataset.skipped["annotations of an unknown image id"] == 1
    assert "1 annotations of an unknown image id" in dataset.skip_summary()
    image, _ = dataset[0]
    assert image.shape[0] == 3 and 0.2 < float(image.mean()) < 0.8
