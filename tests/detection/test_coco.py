"""COCO-format data: the synthetic shapes, the checked loader, and bad input (clear errors, counted skips)."""

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader

from attentive_norm.data.folder import DataError
from attentive_norm.detection.coco import (
    CocoFormatError,
    CocoInstances,
    batches,
    collate,
    load_coco_instances,
)
from attentive_norm.detection.shapes import SHAPE_CLASSES, make_shapes_split


@pytest.fixture
def shapes(tmp_path: Path):
    return make_shapes_split(tmp_path, "train", 6, image_size=64, seed=3)


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def _dataset_dict(shapes) -> dict:
    return json.loads(shapes.ann_file.read_text())


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")
def test_shapes_are_deterministic_valid_coco(tmp_path: Path, shapes) -> None:
    again = make_shapes_split(tmp_path / "again", "train", 6, image_size=64, seed=3)
    assert again.ann_file.read_text() == shapes.ann_file.read_text()
    coco = load_coco_instances(shapes.ann_file)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
    assert len(coco.imgs) == 6 and len(coco.anns) >= 6
    for ann in coco.anns.values():
        mask = coco.annToMask(ann)
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert abs(xs.min() - x) <= 1.5 and abs(xs.max() + 1 - (x + w)) <= 1.5
        assert abs(ys.min() - y) <= 1.5 and abs(ys.max() + 1 - (y + h)) <= 1.5


def test_items_match_torchvision_detection_targets(shapes) -> None:
    ds = CocoInstances(shapes.image_dir, shapes.ann_file, train=False)
    image, target = ds[0]
    assert (
        image.shape == (3, 64, 64) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    )
    n = len(target["labels"])
    assert target["boxes"].shape == (n, 4) and target["masks"].shape == (n, 64, 64)
    assert target["masks"].dtype == torch.uint8 and set(target["labels"].tolist()) <= {1, 2, 3}
    boxes = target["boxes"]
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    images, targets, unreadable = collate([ds[0], ds[1]])
    assert unreadable == 0
    assert len(images) == len(targets) == 2


def test_flip_is_a_function_of_seed_epoch_index(shapes) -> None:
    ds = CocoInstances(shapes.image_dir, shapes.ann_file, train=True, flip_prob=0.5, seed=1)
    plain = CocoInstances(shapes.image_dir, shapes.ann_file, train=False)
    flips = []
    for epoch in range(6):
        image, target = ds[(epoch, 0)]
        again, _ = ds[(epoch, 0)]
        assert torch.equal(image, again)
        ref_image, ref_target = plain[0]
        flipped = not torch.equal(image, ref_image)
        flips.append(flipped)
        if flipped:
            assert torch.equal(image, ref_image.flip(-1))
            assert torch.equal(target["masks"], ref_target["masks"].flip(-1))
            expected = ref_target["boxes"].clone()
            expected[:, [0, 2]] = 64 - ref_target["boxes"][:, [2, 0]]
            assert torch.allclose(target["boxes"], expected)
    assert any(flips) and not all(flips)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"images": [], "annotations": []}), "missing list(s) ['categories']"),
        (
            json.dumps({"images": [], "annotations": [{"image_id": 1, "id": 1, "caption": "a cat"}]}),
            "captions file",
        ),
        (
            json.dumps(
                {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [], "categories": [{"id": 1}]}
            ),
            "numeric 'width' and 'height'",
        ),
        (
            json.dumps(
                {
                    "images": [{"id": 1, "file_name": "a.png", "width": 4, "height": 4}],
                    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2]}],
                    "categories": [{"id": 1}],
                }
            ),
            "'bbox' as [x, y, width, height]",
        ),
    ],
)
def test_not_coco_instances_is_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "ann.json"
    path.write_text(content)
    with pytest.raises(CocoFormatError, match=r"ann\.json") as info:
        load_coco_instances(path)
    assert message in str(info.value)


def test_missing_files_and_folders_are_named(tmp_path: Path, shapes) -> None:
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        CocoInstances(shapes.image_dir, tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        CocoInstances(tmp_path / "nope", shapes.ann_file)


def test_missing_images_empty_images_degenerate_boxes_are_counted(tmp_path: Path, shapes, caplog) -> None:
    data = _dataset_dict(shapes)
    (shapes.image_dir / data["images"][0]["file_name"]).unlink()
    data["images"].append({"id": 100, "file_name": "000001.png", "width": 0, "height": 0})
    data["images"].append({"id": 101, "file_name": "000002.png", "width": 64, "height": 64})  # no annotations
    anns = data["annotations"]
    image_id = data["images"][1]["id"]
    anns.append({"id": 900, "image_id": image_id, "category_id": 1, "bbox": [10, 10, 0, 5]})  # zero width
    anns.append(
        {"id": 901, "image_id": image_id, "category_id": 1, "bbox": [70, 70, 5, 5]}
    )  # outside the image
    anns.append({"id": 902, "image_id": image_id, "category_id": 1, "bbox": [5, 5, float("nan"), 3]})
    anns.append(
        {"id": 903, "image_id": image_id, "category_id": 7, "bbox": [5, 5, 10, 10]}
    )  # unknown category
    anns.append({"id": 904, "image_id": image_id, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": 1})
    ann_file = tmp_path / "bad.json"
    ann_file.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        train = CocoInstances(shapes.image_dir, ann_file, train=True)
    assert train.skipped["images whose file is missing"] == 1
    assert train.skipped["images of size zero"] == 1
    assert train.skipped["degenerate boxes"] == 3
    assert train.skipped["annotations with an unknown category"] == 1
    assert train.skipped["crowd regions (training)"] == 1
    assert train.skipped["training images without a usable annotation"] == 1
    assert "skipped" in caplog.text and "file missing" in caplog.text
    assert 101 not in train.image_ids and len(train) == 5
    for i in range(len(train)):
        _, target = train[i]
        assert (target["boxes"][:, 2:] - target["boxes"][:, :2] >= 1).all()
    val = CocoInstances(shapes.image_dir, ann_file, train=False)
    assert 101 in val.image_ids
    _, target = val[val.image_ids.index(101)]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 64, 64)


def test_no_usable_image_is_an_error(tmp_path: Path, shapes) -> None:
    for f in shapes.image_dir.iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=r"no usable images.*6 images whose file is missing"):
        CocoInstances(shapes.image_dir, shapes.ann_file)


def test_unreadable_image_is_named_skipped_and_counted(shapes, caplog: pytest.LogCaptureFixture) -> None:
    ds = CocoInstances(shapes.image_dir, shapes.ann_file)
    (shapes.image_dir / "000001.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*000001\.png"):
        ds.load_image(0)
    with caplog.at_level("WARNING"):
        assert ds[0] is None
    assert "000001.png" in caplog.text
    images, targets, unreadable = collate([ds[0], ds[1]])
    assert len(images) == len(targets) == 1 and unreadable == 1


def test_rle_and_missing_segmentations(tmp_path: Path) -> None:
    Image.new("RGB", (20, 10)).save(tmp_path / "a.png")
    m = np.zeros((10, 20), np.uint8)
    m[2:5, 3:9] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode()
    flat = m.flatten(order="F")  # uncompressed RLE: run lengths of the column-major mask, zeros first
    edges = [0, *(np.flatnonzero(np.diff(flat)) + 1).tolist(), flat.size]
    uncompressed = {"size": [10, 20], "counts": np.diff(edges).tolist()}
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [3, 2, 6, 3], "segmentation": rle},
            {"id": 2, "image_id": 1, "category_id": 5, "bbox": [3, 2, 6, 3], "segmentation": uncompressed},
            {"id": 3, "image_id": 1, "category_id": 5, "bbox": [3, 2, 6, 3]},
            {"id": 4, "image_id": 1, "category_id": 5, "bbox": [3, 2, 6, 3], "segmentation": [[1, 2]]},
        ],
        "categories": [{"id": 5, "name": "thing"}],
    }
    ds = CocoInstances(tmp_path, _write(tmp_path / "ann.json", data))
    _, target = ds[0]
    assert target["labels"].tolist() == [1, 1, 1, 1]
    for mask in target["masks"]:
        assert torch.equal(mask, torch.from_numpy(m))


@pytest.mark.parametrize(
    ("where", "message"),
    [("images", r"images\[0\] has id 'im1'; image ids must be integers"), ("annotations", r"image_id 'im1'")],
)
def test_image_ids_that_are_not_integers_are_refused_upfront(tmp_path: Path, shapes, where, message) -> None:
    """String ids passed the checks, then crashed at the first batch (torch.tensor of a string)."""
    data = _dataset_dict(shapes)
    if where == "images":
        old = data["images"][0]["id"]
        data["images"][0]["id"] = "im1"
        for ann in data["annotations"]:
            ann["image_id"] = "im1" if ann["image_id"] == old else ann["image_id"]
    else:
        data["annotations"][0]["image_id"] = "im1"
    with pytest.raises(CocoFormatError, match=rf"strids\.json.*{message}"):
        CocoInstances(shapes.image_dir, _write(tmp_path / "strids.json", data))


def test_an_image_of_another_size_than_the_json_says_is_an_error(tmp_path: Path, shapes) -> None:
    """Polygons and RLEs are drawn at the JSON's size: masks of a differently sized image would be wrong."""
    data = _dataset_dict(shapes)
    data["images"][1].update(width=32, height=48)
    ds = CocoInstances(shapes.image_dir, _write(tmp_path / "sizes.json", data))
    assert ds[0] is not None
    expected = r"sizes\.json: image .*000002\.png is 64x64 pixels, but the file says width 32, height 48"
    with pytest.raises(CocoFormatError, match=expected):
        ds[1]
    loader = DataLoader(ds, batch_size=2, collate_fn=collate, num_workers=1)  # raised in a worker
    with pytest.raises(CocoFormatError) as info:
        list(batches(loader))
    message = str(info.value)  # the worker's traceback, which torch puts in front, is left out
    assert message.startswith(str(tmp_path / "sizes.json")) and re.search(expected, message)
    assert "\n" not in message
