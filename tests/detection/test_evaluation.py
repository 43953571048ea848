"""COCOeval wrapper: perfect predictions score 100, none score 0; results and table formatting; drawings."""

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from attentive_norm.detection.coco import CocoInstances
from attentive_norm.detection.evaluation import (
    METRICS,
    coco_evaluate,
    format_ap_table,
    mask_ground_truth,
    to_coco_results,
)
from attentive_norm.detection.shapes import make_shapes_split
from attentive_norm.detection.visualize import draw_predictions, save_visualizations


@pytest.fixture
def val(tmp_path: Path) -> CocoInstances:
    split = make_shapes_split(tmp_path, "val", 5, image_size=64, seed=7)
    return CocoInstances(split.image_dir, split.ann_file)


def _ground_truth_outputs(ds: CocoInstances, label_shift: int = 0) -> tuple[list[dict], list[int]]:
    outputs, ids = [], []
    for i in range(len(ds)):
        _, t = ds[i]
        n = len(t["labels"])
        outputs.append(
            {
                "boxes": t["boxes"],
                "labels": (t["labels"] - 1 + label_shift) % 3 + 1,
                "scores": torch.linspace(1.0, 0.9, n),
                "masks": t["masks"][:, None].float(),
            }
        )
        ids.append(int(t["image_id"]))
    return outputs, ids


def test_perfect_predictions_score_100(val: CocoInstances) -> None:
    outputs, ids = _ground_truth_outputs(val)
    results = to_coco_results(outputs, ids, val.label_to_cat_id)
    assert {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(results[0])
    metrics = coco_evaluate(val.coco, results, ids)
    assert set(metrics) == {"box", "mask"}
    for task in ("box", "mask"):
        assert metrics[task]["AP"] == pytest.approx(100.0, abs=0.5)
        assert metrics[task]["AP50"] == pytest.approx(100.0)
        assert math.isnan(metrics[task]["APl"])  # no large shapes: COCOeval's -1, kept as "no data"


def test_wrong_classes_and_no_detections_score_0(val: CocoInstances) -> None:
    outputs, ids = _ground_truth_outputs(val, label_shift=1)
    metrics = coco_evaluate(val.coco, to_coco_results(outputs, ids, val.label_to_cat_id), ids)
    assert metrics["box"]["AP"] == 0.0
    empty = coco_evaluate(val.coco, [], ids)
    assert empty == {"box": dict.fromkeys(METRICS, 0.0), "mask": dict.fromkeys(METRICS, 0.0)}


def test_ground_truth_without_a_usable_segmentation_is_evaluated_with_its_box(
    tmp_path: Path, val: CocoInstances
) -> None:
    """``[]``, no segmentation, a polygon of fewer than 3 points (``[[1, 2, 3, 4]]`` pycocotools would take
    for a box): COCOeval crashed on them, while training uses the box as mask; evaluation does the same."""
    split = make_shapes_split(tmp_path, "broken", 5, image_size=64, seed=7)
    data = json.loads(split.ann_file.read_text())
    anns = data["annotations"]
    anns[0]["segmentation"] = []
    del anns[1]["segmentation"]
    anns[2]["segmentation"] = [[1, 2]]
    anns[3]["segmentation"] = [[1, 2, 3, 4]]
    anns[4]["segmentation"] = [[5, 6], *anns[4]["segmentation"]]  # its usable polygon is kept
    split.ann_file.write_text(json.dumps(data))
    broken = CocoInstances(split.image_dir, split.ann_file)
    outputs, ids = _ground_truth_outputs(broken)  # the training targets: box masks for the first four
    metrics = coco_evaluate(broken.coco, to_coco_results(outputs, ids, broken.label_to_cat_id), ids)
    assert metrics["mask"]["AP"] == pytest.approx(100.0, abs=0.5)
    assert metrics["box"]["AP"] == pytest.approx(100.0, abs=0.5)
    assert broken.coco.anns[anns[0]["id"]]["segmentation"] == []  # the data itself is left as it is
    assert mask_ground_truth(val.coco, val.image_ids) is val.coco  # nothing to mend: no copy


def test_ap_table() -> None:
    table = format_ap_table({"box": dict.fromkeys(METRICS, 12.345) | {"APl": math.nan}})
    header, row = table.splitlines()
    assert header.split() == list(METRICS)
    assert row.split() == ["box", "12.35", "12.35", "12.35", "12.35", "12.35", "-"]


def test_drawings(tmp_path: Path, val: CocoInstances) -> None:
    outputs, _ = _ground_truth_outputs(val)
    image, _ = val[0]
    drawn = draw_predictions(image, outputs[0], val.class_names, min_side=256)
    assert drawn.dtype == torch.uint8 and drawn.shape == (3, 256, 256)
    assert not torch.equal(
        drawn, (image * 255).round().to(torch.uint8).repeat_interleave(4, 1).repeat_interleave(4, 2)
    )

    class Oracle(torch.nn.Module):
        def forward(self, images: list[torch.Tensor]) -> list[dict]:
            return [outputs[0]]

    paths = save_visualizations(Oracle(), val, tmp_path / "vis", num_images=2)
    assert [p.name for p in paths] == ["pred_000001.png", "pred_000002.png"]
    assert Image.open(paths[0]).size == (320, 320)
