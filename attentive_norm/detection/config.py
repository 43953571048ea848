"""Detection run configuration: typed sections read from YAML presets, with ``section.key=value`` overrides.

A YAML file may name a ``_base_`` file (relative to itself) whose settings it extends. Unknown keys and
values of the wrong type are errors, so a typo never silently falls back to a default or reaches the
model. Presets ship in ``attentive_norm/configs/detection`` and are found by name
(``mask_rcnn_r50_an_fpn_2x``).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..engine.config import ConfigError

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs" / "detection"


@dataclass
class ModelConfig:
    """Arguments of :func:`attentive_norm.detection.builder.maskrcnn` (see there)."""

    backbone: str = "resnet50_an"
    pretrained_backbone: str | None = None
    head_norm: str = "none"
    fpn_norm: str | None = None
    mask_norm: str | None = None
    an_mixtures: list[int] = field(default_factory=lambda: [10, 10, 20, 20])
    fpn_channels: int = 256
    box_conv_channels: int = 256
    box_fc_channels: int = 1024
    box_convs: int = 4
    box_fcs: int = 1
    mask_channels: int = 256
    frozen_stages: int = 1
    norm_eval: bool = True
    out_indices: list[int] | None = None
    anchor_sizes: list[float] | None = None
    canonical_scale: int = 224
    min_size: int = 800
    max_size: int = 1333
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    maskrcnn_kwargs: dict[str, Any] = field(default_factory=dict)
    cascade: bool = False


@dataclass
class ShapesConfig:
    """The synthetic shapes dataset generated when no COCO paths are given."""

    root: str = "runs/detect-shapes/data"
    num_train: int = 240
    num_val: int = 48
    image_size: int = 64
    max_objects: int = 3
    min_radius: float = 8.0
    max_radius: float = 18.0
    seed: int = 0


@dataclass
class DataConfig:
    """Where the COCO-format data lives (or, without paths, the synthetic shapes to generate)."""

    train_images: str | None = None
    train_ann: str | None = None
    val_images: str | None = None
    val_ann: str | None = None
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    num_workers: int = 2
    flip_prob: float = 0.5
    min_box_size: float = 1.0


@dataclass
class SolverConfig:
    """SGD with linear warm-up and step decay at epoch milestones (the paper's COCO settings).

    ``lr`` is for a global batch of ``base_batch_size`` images and scales linearly with the actual
    global batch (``batch_size`` per process × processes).
    """

    lr: float = 0.02
    base_batch_size: int = 16
    batch_size: int = 2
    momentum: float = 0.9
    weight_decay: float = 1e-4
    epochs: int = 24
    milestones: list[float] = field(default_factory=lambda: [16, 22])
    gamma: float = 0.1
    warmup_iters: int = 500
    warmup_factor: float = 1.0 / 3.0
    grad_clip: float | None = 35.0
    max_iters: int | None = None


@dataclass
class DetectionConfig:
    """A whole detection run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    output_dir: str = "runs/detect"
    seed: int = 0
    device: str = "auto"
    log_interval: int = 20
    checkpoint_interval: int = 0
    eval_interval: int = 0
    visualize: int = 4
    score_threshold: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the shipped preset of that name."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    preset = PRESET_DIR / f"{path.stem}.yaml"
    if preset.is_file():
        return preset
    raise ConfigError(f"no config file {str(name_or_path)!r} and no such preset; presets: {list_presets()}")


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise ConfigError(f"config {path}: _base_ cycle through {[str(p) for p in seen]}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping at the top level")
    base = data.pop("_base_", None)
    if base is None:
        return data
    return _merge(_read_yaml((path.parent / base).resolve(), (*seen, path)), data)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """``cls(**data)``, recursing into dataclass fields; unknown keys raise :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section {where or 'top level'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {unknown} in {where or 'top level'}; known: {sorted(names)}"
        )
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{where}{key}.")
            continue
        converted = _convert(value, hint)
        if converted is _WRONG:
            raise ConfigError(f"config key {where}{key} must be {_type_name(hint)}, got {value!r}")
        kwargs[key] = converted
    return cls(**kwargs)


_WRONG = object()


def _convert(value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (ints and numeric strings become floats where a float is expected:
    YAML reads ``1e-4`` as a string), or ``_WRONG``."""
    if hint is Any:
        return value
    if isinstance(hint, types.UnionType):
        for option in typing.get_args(hint):
            converted = _convert(value, option)
            if converted is not _WRONG:
                return converted
        return _WRONG
    if hint is type(None):
        return None if value is None else _WRONG
    if isinstance(value, bool):
        return value if hint is bool else _WRONG
    if hint is float and isinstance(value, int | float):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return _WRONG
    origin = typing.get_origin(hint)
    if origin is list and isinstance(value, list):
        items = [_convert(v, typing.get_args(hint)[0]) for v in value]
        return _WRONG if any(v is _WRONG for v in items) else items
    if origin is dict:
        return value if isinstance(value, dict) else _WRONG
    return value if origin is None and isinstance(value, hint) else _WRONG


def _type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType):
        return " or ".join(_type_name(option) for option in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return str(hint).replace("typing.", "") if typing.get_origin(hint) else hint.__name__


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"solver.lr=0.01"`` -> (``["solver", "lr"]``, 0.01); the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override must look like section.key=value, got {text!r}")
    return key.strip().split("."), yaml.safe_load(value)


def load_config(
    name_or_path: str | Path | None = None, overrides: Sequence[str] = (), base: dict[str, Any] | None = None
) -> DetectionConfig:
    """The defaults, updated by ``base`` (a saved config) or a YAML file or preset, then by
    ``section.key=value`` overrides."""
    if base is not None and name_or_path:
        raise ConfigError("give a config file or a saved config, not both")
    data = (
        copy.deepcopy(base)
        if base is not None
        else _read_yaml(resolve_config_path(name_or_path))
        if name_or_path
        else {}
    )
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {key!r} is not a section")
        node[keys[-1]] = value
    return _build(DetectionConfig, data, "")
