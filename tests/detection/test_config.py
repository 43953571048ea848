"""Detection configs: the paper's presets, _base_ inheritance, overrides, unknown keys; the LR schedule."""

import re
from pathlib import Path

import pytest

import attentive_norm.detection as detection
import attentive_norm.detection.config as detection_config
from attentive_norm.detection.config import PRESET_DIR, list_presets, load_config
from attentive_norm.detection.engine import lr_factor
from attentive_norm.engine.config import ConfigError


def test_presets_hold_the_papers_coco_settings() -> None:
    assert {"shapes_demo", "mask_rcnn_r50_an_angn_fpn_2x", "mask_rcnn_r101_bn_fpn_2x"} <= set(list_presets())
    cfg = load_config("mask_rcnn_r50_an_angn_fpn_2x")
    m, s = cfg.model, cfg.solver
    assert (m.backbone, m.head_norm, m.fpn_norm, m.mask_norm) == ("resnet50_an", "an_gn", "gn", "gn")
    assert m.an_mixtures == [10, 10, 20, 20] and m.frozen_stages == 1 and m.norm_eval
    assert (m.min_size, m.max_size) == (800, 1333)
    assert (s.lr, s.base_batch_size, s.momentum, s.weight_decay) == (0.02, 16, 0.9, 1e-4)
    assert (s.epochs, s.milestones, s.warmup_iters) == (24, [16, 22], 500)
    assert s.warmup_factor == pytest.approx(1 / 3)
    for name in list_presets():
        load_config(name)
    assert load_config("mask_rcnn_r101_bn_fpn_2x").model.backbone == "resnet101"
    cascade = load_config("cascade_mask_rcnn_r101_an_fpn_20e")
    assert cascade.model.cascade and cascade.model.backbone == "resnet101_an"
    assert (cascade.solver.epochs, cascade.solver.milestones) == (20, [16, 19])


def test_files_bases_and_overrides(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("model: {backbone: resnet20, fpn_channels: 32}\nsolver: {lr: 1}\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\nmodel: {head_norm: gn}\n")
    cfg = load_config(child, ["solver.lr=0.5", "model.anchor_sizes=[8, 16]", "data.shapes.num_train=10"])
    assert (cfg.model.backbone, cfg.model.fpn_channels, cfg.model.head_norm) == ("resnet20", 32, "gn")
    assert cfg.solver.lr == 0.5 and isinstance(load_config(base).solver.lr, float)
    assert cfg.model.anchor_sizes == [8, 16] and cfg.data.shapes.num_train == 10
    assert load_config(base=cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.backbon=resnet20"], "unknown config key.*backbon"),
        (["solver=3"], "must be a mapping"),
        (["lr0.1"], "section.key=value"),
        (["solver.batch_size=abc"], "config key solver.batch_size must be int, got 'abc'"),
        (["solver.grad_clip=[1]"], r"solver.grad_clip must be float or null"),
        (["model.an_mixtures=[2, two]"], r"model.an_mixtures must be list\[int\]"),
        (["model.norm_eval=1"], "model.norm_eval must be bool"),
        (["data.shapes.num_train=1.5"], "data.shapes.num_train must be int"),
    ],
)
def test_bad_settings_are_config_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_values_are_converted_to_their_setting_type(tmp_path: Path) -> None:
    cfg = load_config(None, ["solver.weight_decay=1e-4", "solver.lr=1", "model.anchor_sizes=[8, 16]"])
    assert cfg.solver.weight_decay == 1e-4 and isinstance(cfg.solver.lr, float)  # YAML reads 1e-4 as text
    assert all(isinstance(v, float) for v in cfg.model.anchor_sizes)
    path = tmp_path / "bad.yaml"
    path.write_text("solver: {epochs: twenty}\n")
    with pytest.raises(ConfigError, match=r"solver\.epochs must be int, got 'twenty'"):
        load_config(path)


def test_docs_point_to_what_exists() -> None:
    """The package docstring names the README section, the config docstring real presets, and the presets
    cite the paper (not a file outside this repository)."""
    section = "Detection and instance segmentation (Mask R-CNN)"
    assert f"## {section}" in (Path(__file__).parents[2] / "README.md").read_text()
    assert section in " ".join(detection.__doc__.split()) and "docs/" not in detection.__doc__
    named = re.findall(r"``(\w+_fpn_\w+)``", detection_config.__doc__)
    assert named and set(named) <= set(list_presets())
    for path in PRESET_DIR.glob("*rcnn*.yaml"):
        text = path.read_text()
        assert "SPEC.md" not in text and "arXiv:1908.01259" in text, path.name


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="no such preset"):
        load_config("mask_rcnn_r18")


def test_lr_schedule_warmup_and_steps() -> None:
    cfg = load_config("mask_rcnn_fpn_2x")
    per_epoch = 1000
    assert lr_factor(cfg, 0, per_epoch) == pytest.approx(1 / 3)
    assert lr_factor(cfg, 250, per_epoch) == pytest.approx(2 / 3)
    assert lr_factor(cfg, 500, per_epoch) == 1.0
    assert lr_factor(cfg, 16 * per_epoch - 1, per_epoch) == 1.0
    assert lr_factor(cfg, 16 * per_epoch, per_epoch) == pytest.approx(0.1)
    assert lr_factor(cfg, 22 * per_epoch, per_epoch) == pytest.approx(0.01)
