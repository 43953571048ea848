"""Detection and instance segmentation: Mask R-CNN with AN backbones and heads on COCO-format data.

Built on torchvision's Mask R-CNN, FPN, RoIAlign and losses; evaluated with pycocotools' COCOeval
(``pip install attentive-norm[detection]``). See ``docs/detection.md``.
"""

from .backbone import ShapeSpec, ZooFPNBackbone, build_backbone
from .builder import maskrcnn
from .coco import CocoFormatError, CocoInstances, load_coco_instances
from .config import DetectionConfig, list_presets, load_config
from .engine import evaluate, train
from .evaluation import coco_evaluate, format_ap_table
from .heads import ConvFCBoxHead, mask_head
from .shapes import make_shapes_split
from .visualize import draw_predictions, save_visualizations

__all__ = [
    "CocoFormatError",
    "CocoInstances",
    "ConvFCBoxHead",
    "DetectionConfig",
    "ShapeSpec",
    "ZooFPNBackbone",
    "build_backbone",
    "coco_evaluate",
    "draw_predictions",
    "evaluate",
    "format_ap_table",
    "list_presets",
    "load_coco_instances",
    "load_config",
    "make_shapes_split",
    "mask_head",
    "maskrcnn",
    "save_visualizations",
    "train",
]
