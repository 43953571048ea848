"""Detection and instance segmentation: Mask R-CNN with AN backbones and heads on COCO-format data.

Built on torchvision's Mask R-CNN, FPN, RoIAlign and losses; evaluated with pycocotools' COCOeval
(``pip install "attentive-norm[detection]"``). See the README section "Detection and instance
segmentation (Mask R-CNN)".

The names below are imported on first use, so the modules that do not need pycocotools (``config``,
``builder``, ``backbone``, ``heads``, ``shapes``) work without it, and so does the command line.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES: dict[str, str] = {
    "CocoFormatError": "coco",
    "CocoInstances": "coco",
    "ConvFCBoxHead": "heads",
    "DetectionConfig": "config",
    "ShapeSpec": "backbone",
    "ZooFPNBackbone": "backbone",
    "build_backbone": "backbone",
    "coco_evaluate": "evaluation",
    "draw_predictions": "visualize",
    "evaluate": "engine",
    "format_ap_table": "evaluation",
    "list_presets": "config",
    "load_coco_instances": "coco",
    "load_config": "config",
    "make_shapes_split": "shapes",
    "mask_head": "heads",
    "maskrcnn": "builder",
    "save_visualizations": "visualize",
    "train": "engine",
}

__all__ = sorted(_MODULES)


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULES[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
