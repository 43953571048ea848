"""Backbone (zoo model + FPN, freezing, checkpoint loading), heads and the Mask R-CNN builder."""

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.ops import FrozenBatchNorm2d

from attentive_norm.checkpoint.testing import official_state_from_model, write_official_checkpoint
from attentive_norm.detection.backbone import build_backbone, default_out_indices
from attentive_norm.detection.builder import maskrcnn, maskrcnn_settings
from attentive_norm.detection.cascade import CascadeRoIHeads
from attentive_norm.detection.heads import ConvFCBoxHead, mask_head
from attentive_norm.layers import AttentiveBatchNorm2d, AttentiveGroupNorm
from attentive_norm.layers.frozen_stats import FrozenStatsBatchNorm2d
from attentive_norm.models import create_model

TINY = {
    "fpn_channels": 32,
    "box_conv_channels": 32,
    "box_fc_channels": 64,
    "mask_channels": 32,
    "an_mixtures": (2, 2, 3, 3),
    "min_size": 64,
    "max_size": 64,
}


def _targets(n: int = 2) -> list[dict]:
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[:, 10:30, 12:40] = 1
    return [{"boxes": torch.tensor([[12.0, 10, 40, 30]]), "labels": torch.tensor([1]), "masks": masks}] * n


def test_default_out_indices() -> None:
    info = [{"reduction": r} for r in (2, 4, 4, 8, 16, 32)]
    assert default_out_indices(info) == [2, 3, 4, 5]
    assert default_out_indices([{"reduction": r} for r in (1, 2, 4)]) == [0, 1, 2]


@pytest.mark.parametrize("name", ["resnet20_an", "mobilenetv2_an"])
def test_zoo_backbone_contract(name: str) -> None:
    backbone = build_backbone(name, fpn_channels=16, frozen_stages=0, norm_eval=False)
    shapes = backbone.output_shape()
    assert list(shapes) == [*backbone.level_names, "pool"] and backbone.out_channels == 16
    out = backbone(torch.randn(1, 3, 64, 64))
    assert list(out) == list(shapes)
    for name_, spec in shapes.items():
        assert out[name_].shape == (1, 16, -(-64 // spec.stride), -(-64 // spec.stride))


def test_paper_settings_on_resnet50_an() -> None:
    """The paper's COCO settings: stem + stage 1 frozen, every backbone norm's statistics frozen, AN
    mixture/attention train; AN (w/ GN) head: 4 box convs with GN-based AN (32 groups, K 10,10,20,20), FPN
    and mask head GN(32)."""
    model = maskrcnn("resnet50_an", 80, head_norm="an_gn", min_size=64, max_size=64)
    assert isinstance(model, MaskRCNN)
    net = model.backbone.body.model
    for frozen in (net.conv1, net.bn1, net.layer1):
        assert not any(p.requires_grad for p in frozen.parameters())
    assert isinstance(net.bn1, FrozenBatchNorm2d) and isinstance(net.layer1[0].bn1, FrozenBatchNorm2d)
    assert all(p.requires_grad for p in net.layer2.parameters())
    an = net.layer2[0].bn2
    assert isinstance(an, AttentiveBatchNorm2d) and an.freeze_stats and an.mixture_weight.requires_grad
    assert isinstance(net.layer2[0].bn1, FrozenStatsBatchNorm2d) and net.layer2[0].bn1.weight.requires_grad
    assert not any(type(m) is nn.BatchNorm2d for m in net.modules())
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    model.train()
    model.backbone(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in stats.items())

    box_norms = [m for m in model.roi_heads.box_head.modules() if isinstance(m, AttentiveGroupNorm)]
    assert [m.num_mixtures for m in box_norms] == [10, 10, 20, 20]
    assert all(m.num_groups == 32 and m.num_channels == 256 for m in box_norms)
    for part in (model.backbone.fpn, model.roi_heads.mask_head):
        gns = [m for m in part.modules() if isinstance(m, nn.GroupNorm)]
        assert gns and all(m.num_groups == 32 for m in gns)
    assert len([m for m in model.roi_heads.mask_head.modules() if isinstance(m, nn.GroupNorm)]) == 4
    fcs = [m for m in model.roi_heads.box_head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in fcs] == [(256 * 49, 1024)]
    assert model.roi_heads.box_predictor.cls_score.out_features == 81


@pytest.mark.parametrize("head_norm", ["none", "bn", "gn", "an_gn"])
def test_maskrcnn_trains_and_predicts(head_norm: str) -> None:
    model = maskrcnn("resnet20_an", 2, head_norm=head_norm, frozen_stages=1, norm_eval=True, **TINY)
    norms = {"none": (), "bn": (nn.BatchNorm2d,), "gn": (nn.GroupNorm,), "an_gn": (AttentiveGroupNorm,)}
    box_norms = [
        m
        for m in model.roi_heads.box_head.modules()
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, AttentiveGroupNorm))
    ]
    assert len(box_norms) == (0 if head_norm == "none" else 4)
    assert all(isinstance(m, norms[head_norm]) for m in box_norms)
    model.train()
    losses = model([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], _targets())
    assert set(losses) == {
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
        "loss_objectness",
        "loss_rpn_box_reg",
    }
    sum(losses.values()).backward()
    an = [m for m in model.backbone.body.modules() if isinstance(m, AttentiveBatchNorm2d)]
    trainable = [m for m in an if m.mixture_weight.requires_grad]
    assert trainable and all(m.mixture_weight.grad is not None for m in trainable)
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 64)])[0]
    assert {"boxes", "labels", "scores", "masks"} <= set(out)


def test_bad_head_settings() -> None:
    with pytest.raises(ValueError, match="head_norm"):
        maskrcnn("resnet20", 2, head_norm="ln", **TINY)
    with pytest.raises(ValueError, match="one K per conv"):
        ConvFCBoxHead(32, norm="an_gn", num_mixtures=(2, 2))
    with pytest.raises(ValueError, match="frozen_stages"):
        build_backbone("resnet20", frozen_stages=5)
    with pytest.raises(ValueError, match="anchor size"):
        maskrcnn("resnet20", 2, anchor_sizes=[8, 16], **TINY)
    assert len(mask_head(32, 32, norm="gn")) == 4


def test_maskrcnn_kwargs_torchvision_would_ignore_are_errors() -> None:
    """torchvision's MaskRCNN swallows unknown keyword arguments: a typo would silently do nothing."""
    with pytest.raises(ValueError, match=r"'box_detections_per_imgg'.*did you mean 'box_detections_per_img'"):
        maskrcnn("resnet20", 2, box_detections_per_imgg=5, **TINY)
    with pytest.raises(ValueError, match="'box_head' is set by maskrcnn"):
        maskrcnn("resnet20", 2, box_head=nn.Identity(), **TINY)
    for key in ("box_detections_per_img", "rpn_batch_size_per_image", "image_mean", "size_divisible"):
        assert key in maskrcnn_settings()  # MaskRCNN's, FasterRCNN's and the image transform's own
    model = maskrcnn("resnet20", 2, box_detections_per_img=5, size_divisible=16, **TINY)
    assert model.roi_heads.detections_per_img == 5 and model.transform.size_divisible == 16


def _checkpoint_roundtrip(tmp_path: Path, write) -> None:
    source = create_model("resnet20_an")
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "imagenet.pth"
    write(source, path)
    backbone = build_backbone("resnet20_an", pretrained=path, frozen_stages=0, norm_eval=False)
    loaded = backbone.body.model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.allclose(loaded[key].float(), value.float(), atol=1e-3), key


def test_loads_our_imagenet_checkpoint(tmp_path: Path) -> None:
    _checkpoint_roundtrip(tmp_path, lambda model, path: torch.save(model.state_dict(), path))


def test_loads_the_authors_checkpoint_format(tmp_path: Path) -> None:
    def write(model: nn.Module, path: Path) -> None:
        write_official_checkpoint(*official_state_from_model(model), path, arch="resnet20_an")

    _checkpoint_roundtrip(tmp_path, write)


def test_cascade_mask_rcnn() -> None:
    model = maskrcnn(
        "resnet20_an", 2, head_norm="an_gn", cascade=True, frozen_stages=0, norm_eval=False, **TINY
    )
    heads = model.roi_heads
    assert isinstance(heads, CascadeRoIHeads)
    assert len(heads.box_heads) == len(heads.mask_heads) == len(heads.box_predictors) == 3
    assert [m.bbox_pred.out_features for m in heads.box_predictors] == [4, 4, 4]  # class-agnostic boxes
    assert [m.high_threshold for m in heads.matchers] == [0.5, 0.6, 0.7]
    model.train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    losses = model(images, _targets())
    assert {f"loss_{k}_s{s}" for k in ("classifier", "box_reg", "mask") for s in range(3)} < set(losses)
    sum(losses.values()).backward()
    assert all(p.grad is not None for h in heads.box_heads for p in h.parameters())

    targets = _targets(1)
    _, _, labels, is_gt, regression = heads._sample([torch.tensor([[0.0, 0, 8, 8]])], targets, 2)
    assert is_gt[0].sum() == 1 and labels[0][is_gt[0]].tolist() == [1]
    assert torch.allclose(regression[0][is_gt[0]], torch.zeros(1, 4), atol=1e-6)

    model.eval()
    heads.score_thresh = 0.0
    with torch.no_grad():
        out = model(images)[0]
    n = len(out["boxes"])
    assert n > 0 and out["masks"].shape == (n, 1, 64, 64)
    assert out["masks"].min() >= 0 and out["masks"].max() <= 1
    assert (out["boxes"] >= 0).all() and (out["boxes"] <= 64).all()
