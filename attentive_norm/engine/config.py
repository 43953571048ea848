"""The training configuration: defaults (the digits demo) < YAML preset or file < command-line flags.

Every setting is a field of :class:`TrainConfig`; its ``help`` metadata is the flag's help text. A YAML
file may set any subset of the fields; an unknown key or a value of the wrong type is an error that
names the key (and the closest valid one), raised before anything is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

AMP_MODES: tuple[str, ...] = ("none", "bf16", "fp16")


class ConfigError(ValueError):
    """A configuration problem the user can fix (unknown key, wrong type, bad value, missing preset)."""


def _opt(default: Any, help: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    """Everything a training run needs. Defaults: ResNet-20-AN on the bundled digits, a few CPU minutes."""

    # model
    model: str = _opt("resnet20_an", "registered model name (attentive_norm.models.list_models())")
    model_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "extra builder arguments, as YAML: '{placement: bn12}'"}
    )
    pretrained: str | None = _opt(
        None, "start from this checkpoint's weights (ours or the authors'; new classifier if classes differ)"
    )
    # data
    data: str | None = _opt(None, "ImageFolder root with train/ and val/; unset: the bundled digits")
    requires_data: bool = _opt(False, "refuse to run without --data (set by the ImageNet presets)")
    image_size: int = _opt(32, "training crop and evaluation crop size (ImageNet: 224)")
    eval_resize: int | None = _opt(None, "resize the shorter side before the centre crop (ImageNet: 256)")
    interpolation: str = _opt("bilinear", "resize interpolation: bilinear or bicubic")
    subset: int | None = _opt(None, "use a random subset of this many training (and validation) images")
    subset_seed: int | None = _opt(None, "seed that draws the subset (unset: --seed)")
    workers: int | None = _opt(None, "data-loading processes per training process (unset: automatic)")
    # optimisation
    epochs: int = _opt(20, "training epochs")
    batch_size: int = _opt(64, "GLOBAL batch size, split evenly over the processes")
    lr: float = _opt(0.2, "learning rate per 256 images; the peak LR is lr * batch_size / 256")
    min_lr: float = _opt(0.0, "learning rate at the end of the cosine")
    warmup_epochs: float = _opt(1.0, "linear warm-up length in epochs (the paper: 5)")
    momentum: float = _opt(0.9, "SGD momentum")
    nesterov: bool = _opt(False, "Nesterov momentum")
    weight_decay: float = _opt(5e-4, "weight decay (the paper: 1e-4, MobileNetV2 4e-5)")
    decay_norm_bias: bool = _opt(True, "decay norm parameters and biases too (the paper: yes)")
    label_smoothing: float = _opt(0.0, "label smoothing (the paper's advanced recipe: 0.1)")
    mixup_alpha: float = _opt(0.0, "mixup Beta(alpha, alpha), one lambda per batch; 0 disables")
    clip_grad: float | None = _opt(None, "clip the global gradient norm to this value")
    skip_nonfinite: bool = _opt(False, "skip (and count) steps whose loss is NaN/Inf instead of stopping")
    ema_decay: float | None = _opt(None, "keep an exponential moving average of the weights (e.g. 0.9999)")
    # precision and speed
    amp: str = _opt("none", "mixed precision: none, bf16 or fp16 (fp16 uses a gradient scaler)")
    channels_last: bool = _opt(False, "channels_last memory format")
    compile: bool = _opt(False, "torch.compile the model")
    device: str = _opt("auto", "auto (cuda if available), cpu, cuda")
    threads: int | None = _opt(None, "CPU threads per process (unset: the cores divided among processes)")
    sync_norm: bool = _opt(True, "synchronise norm statistics across processes (distributed runs)")
    # reproducibility and output
    seed: int = _opt(0, "random seed (data order, augmentation, initialisation)")
    deterministic: bool = _opt(False, "deterministic algorithms (bitwise reproducible on CPU)")
    output: str = _opt("runs", "folder that receives the run folders")
    name: str | None = _opt(None, "run folder name (unset: time stamp and model)")
    save_every: int = _opt(0, "also save the latest checkpoint every N steps (0: at epoch ends only)")
    auto_resume: bool = _opt(False, "continue output/name from its latest checkpoint if it has one")
    attention_layer: str | None = _opt(None, "AN layer whose class-mean weights are plotted (unset: last)")
    progress: bool = _opt(True, "show a progress bar per epoch")

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "image_size": self.image_size >= 1,
            "lr": self.lr > 0,
            "warmup_epochs": self.warmup_epochs >= 0,
            "weight_decay": self.weight_decay >= 0,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "mixup_alpha": self.mixup_alpha >= 0,
            "save_every": self.save_every >= 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"config: {key}={getattr(self, key)!r} is out of range")
        choices = {
            "amp": AMP_MODES,
            "interpolation": ("bilinear", "bicubic"),
            "device": ("auto", "cpu", "cuda"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(
                    f"config: {key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}"
                )
        for key in ("subset", "workers", "threads", "eval_resize", "clip_grad"):
            value = getattr(self, key)
            if value is not None and value < (0 if key == "workers" else 1e-12):
                raise ConfigError(f"config: {key}={value!r} is out of range")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"config: ema_decay must be in (0, 1), got {self.ema_decay}")

    def peak_lr(self) -> float:
        """The learning rate after warm-up: ``lr`` scaled by the global batch / 256, as in the paper."""
        return self.lr * self.batch_size / 256

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainConfig))


def field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def make_config(*layers: dict[str, Any], source: str = "config") -> TrainConfig:
    """``TrainConfig`` from dictionaries applied in order (later ones win), every key and type checked."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(check_keys(layer, source))
    return TrainConfig(**merged)


def check_keys(values: dict[str, Any], source: str) -> dict[str, Any]:
    """``values`` with every key known and every value of its field's type (ints and numeric strings
    accepted as floats)."""
    types_ = field_types()
    checked = {}
    for key, value in values.items():
        if key not in types_:
            close = difflib.get_close_matches(str(key), list(types_), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint}; valid keys: {', '.join(types_)}")
        checked[key] = _coerce(key, value, types_[key], source)
    return checked


def _coerce(key: str, value: Any, annotation: Any, source: str) -> Any:
    allowed = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    for kind in allowed:
        origin = typing.get_origin(kind) or kind
        if value is None and kind is type(None):
            return None
        if origin is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if origin is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                continue
        if origin is int and isinstance(value, bool):
            continue
        if origin is not type(None) and isinstance(value, origin):
            return value
    names = " or ".join("null" if k is type(None) else getattr(k, "__name__", str(k)) for k in allowed)
    raise ConfigError(f"{source}: {key} must be {names}, got {value!r}")


def preset_names() -> list[str]:
    """The recipes shipped with the package (``attentive_norm/configs/*.yaml``), by file stem."""
    folder = resources.files("attentive_norm") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_yaml_config(name_or_path: str) -> dict[str, Any]:
    """The mapping in a YAML file, given its path or the name of a shipped preset (``resnet50_an``)."""
    path = Path(name_or_path)
    if not path.is_file():
        packaged = resources.files("attentive_norm") / "configs" / f"{name_or_path}.yaml"
        if not packaged.is_file():
            presets = ", ".join(preset_names())
            raise ConfigError(f"config {name_or_path!r} is neither a file nor a preset; presets: {presets}")
        text, source = packaged.read_text(), f"preset {name_or_path}"
    else:
        text, source = path.read_text(), str(path)
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
    return check_keys(values, source)


def dump_yaml(cfg: TrainConfig, header: str = "") -> str:
    """The resolved configuration as YAML (loadable with ``--config``), after optional comment lines."""
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return comments + yaml.safe_dump(cfg.to_dict(), sort_keys=False)
