"""Detection and instance segmentation: Mask R-CNN with AN backbones and heads on COCO-format data."""
