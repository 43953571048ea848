"""Whole networks side by side: parameters, FLOPs, training step, inference, images/s, peak memory.

All models are built in one process and measured round-robin (one training step of each model, then
the next round, the order reversed every other round; inference likewise), so a change of load hits
every model alike. A training step is forward, cross-entropy on random labels, backward and an SGD
(momentum 0.9) update; inference is an eval-mode forward under ``torch.inference_mode``. Peak memory
is measured in a separate, untimed step: the bytes the step allocates on top of what exists before it,
plus the parameters, buffers and optimizer state (the input batch is not counted).

Times are medians over the rounds. The time ratios in the table ("x") are paired: the median over rounds
of (this model's time / the baseline's time in the same round), which cancels load that changes between
rounds, with its distribution-free 95% confidence interval (from 6 rounds on); ``<key>_ratio`` in the
files is the plain ratio of medians. A model listed twice is built and measured twice (the second
labelled ``name#2``): listing the baseline twice gives an A/A control, whose ratio shows how well the run
can resolve a difference.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models import create_model
from ..models.flops import count_flops, count_params
from .common import (
    Settings,
    add_paired_ratios,
    add_ratios,
    format_markdown,
    format_table,
    interleaved_times,
    load_average,
    machine_info,
    num_threads,
    peak_memory_bytes,
    summarise_times,
    tensor_bytes,
)

DEFAULT_MODELS: tuple[str, ...] = (
    "resnet50",
    "resnet50_an",
    "resnet50_se",
    "timm:seresnet50",
    "mobilenetv2",
    "mobilenetv2_an",
)
"""ResNet-50 with BN (the baseline of the ratios), with AN, the paper's SE baseline, timm's SE-ResNet-50,
and MobileNetV2 with BN and AN."""

QUICK_MODELS: tuple[str, ...] = ("resnet20", "resnet20_an")
"""``--quick``: two tiny CIFAR ResNets, for a smoke test in seconds."""

RATIO_KEYS: tuple[str, ...] = ("params", "flops", "train_ms", "infer_ms", "train_peak_mb", "infer_peak_mb")

COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("model", "model", "{}"),
    ("params_m", "params (M)", "{:.2f}"),
    ("gflops", "GFLOPs", "{:.2f}"),
    ("train_ms", "train step (ms)", "{:.1f}"),
    ("train_paired_ratio", "x", "{:.3f}"),
    ("train_paired_interval", "95% CI", "{}"),
    ("infer_ms", "inference (ms)", "{:.1f}"),
    ("infer_paired_ratio", "x", "{:.3f}"),
    ("infer_paired_interval", "95% CI", "{}"),
    ("train_images_per_s", "train img/s", "{:.1f}"),
    ("infer_images_per_s", "infer img/s", "{:.1f}"),
    ("train_peak_mb", "train peak (MB)", "{:.0f}"),
    ("train_peak_mb_ratio", "x", "{:.3f}"),
    ("infer_peak_mb", "infer peak (MB)", "{:.0f}"),
)

PLOT_METRICS: tuple[tuple[str, str], ...] = (
    ("train_paired", "training step"),
    ("infer_paired", "inference"),
    ("train_peak_mb", "peak training memory"),
    ("params", "parameters"),
    ("flops", "FLOPs"),
)


def build_model(name: str, num_classes: int = 1000) -> nn.Module:
    """A model of this package's zoo, or of timm with the prefix ``timm:`` (also for names the zoo
    lacks), randomly initialised."""
    if not name.startswith("timm:"):
        try:
            return create_model(name, num_classes=num_classes)
        except ValueError as exc:
            zoo_error = exc
    else:
        zoo_error = None
    try:
        import timm
    except ImportError as exc:
        raise ValueError(f"{zoo_error or name}; timm is not installed for 'timm:' models") from exc
    timm_name = name.removeprefix("timm:")
    if not timm.is_model(timm_name):
        raise ValueError(zoo_error or f"unknown timm model {timm_name!r}")
    return timm.create_model(timm_name, pretrained=False, num_classes=num_classes)


@dataclasses.dataclass
class _Runner:
    """One model with its optimizer, input and the two timed closures."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_step: Callable[[], None]
    infer_step: Callable[[], None]

    def state_bytes(self) -> int:
        """Parameters, buffers and optimizer state."""
        optimizer_state = [
            v
            for state in self.optimizer.state.values()
            for v in state.values()
            if isinstance(v, torch.Tensor)
        ]
        return tensor_bytes(iter([*self.model.parameters(), *self.model.buffers(), *optimizer_state]))


def unique_labels(names: Sequence[str]) -> list[str]:
    """``names`` with repeats labelled ``name#2``, ``name#3``, ... (each is built and timed on its own)."""
    seen: dict[str, int] = {}
    labels = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return labels


def _make_runner(name: str, label: str, settings: Settings, num_classes: int) -> _Runner:
    device = torch.device(settings.device)
    model = build_model(name, num_classes).to(device=device, memory_format=settings.memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(
        settings.batch_size, 3, settings.image_size, settings.image_size, generator=generator
    ).to(device=device, memory_format=settings.memory_format)
    labels = torch.randint(0, num_classes, (settings.batch_size,), generator=generator).to(device)
    forward = torch.compile(model) if settings.compile else model

    def train_step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with settings.autocast():
            logits = forward(images)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()

    def infer_step() -> None:
        model.eval()
        with torch.inference_mode(), settings.autocast():
            forward(images)

    return _Runner(label, model, optimizer, train_step, infer_step)


def benchmark_networks(
    models: Sequence[str] = DEFAULT_MODELS,
    settings: Settings | None = None,
    num_classes: int = 1000,
    measure_memory: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure ``models`` (names as for :func:`build_model`) under ``settings``; the first model is the
    baseline of every ratio. Returns ``{"machine": ..., "rows": [...]}``, one row per model."""
    settings = settings or Settings()
    if not models:
        raise ValueError("benchmark_networks needs at least one model")
    log = log or (lambda message: None)
    with num_threads(settings.threads):
        info = machine_info(settings)
        runners = []
        rows: list[dict[str, Any]] = []
        for name, label in zip(models, unique_labels(models)):
            log(f"building {label}")
            runner = _make_runner(name, label, settings, num_classes)
            runners.append(runner)
            flops_model = copy.deepcopy(runner.model).float().to(memory_format=torch.contiguous_format)
            try:  # the first forward pass: a model that cannot take this input size says so here
                flops = count_flops(flops_model, (1, 3, settings.image_size, settings.image_size))
            except Exception as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ValueError(
                    f"{label} cannot run on {settings.image_size}x{settings.image_size} images "
                    f"({type(exc).__name__}: {reason}); choose another --image-size"
                ) from exc
            del flops_model
            params = count_params(runner.model)
            rows.append({"model": label, "params": params, "flops": flops})

        log("timing training steps")
        train = interleaved_times(
            {r.name: r.train_step for r in runners},
            settings.warmup + (2 if settings.compile else 0),
            settings.iterations,
        )
        log("timing inference")
        infer = interleaved_times(
            {r.name: r.infer_step for r in runners},
            settings.warmup + (2 if settings.compile else 0),
            settings.iterations,
        )
        for row, runner in zip(rows, runners):
            t, i = summarise_times(train[runner.name]), summarise_times(infer[runner.name])
            row.update(
                params_m=row["params"] / 1e6,
                gflops=row["flops"] / 1e9,
                train_ms=t["median_ms"],
                train_ms_min=t["min_ms"],
                infer_ms=i["median_ms"],
                infer_ms_min=i["min_ms"],
                train_images_per_s=settings.batch_size / (t["median_ms"] / 1e3),
                infer_images_per_s=settings.batch_size / (i["median_ms"] / 1e3),
                train_times_ms=[x * 1e3 for x in train[runner.name]],
                infer_times_ms=[x * 1e3 for x in infer[runner.name]],
            )
        if measure_memory:
            log("measuring peak memory")
            for row, runner in zip(rows, runners):
                runner.train_step()  # the optimizer state exists from here on
                base = runner.state_bytes()
                row["state_mb"] = base / 2**20
                row["train_peak_mb"] = (base + peak_memory_bytes(runner.train_step)) / 2**20
                row["infer_peak_mb"] = (base + peak_memory_bytes(runner.infer_step)) / 2**20
        info["load_average_end"] = load_average()
    add_ratios(rows, RATIO_KEYS)
    add_paired_ratios(rows, ("train_times_ms", "infer_times_ms"))
    return {"kind": "network", "machine": info, "rows": rows}


def network_table(result: dict[str, Any], markdown: bool = False) -> str:
    rows = result["rows"]
    columns = [c for c in COLUMNS if any(row.get(c[0]) is not None for row in rows)]
    return format_markdown(rows, columns) if markdown else format_table(rows, columns)
