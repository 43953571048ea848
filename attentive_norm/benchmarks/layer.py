"""One AN layer against ``nn.BatchNorm2d`` and against the plain eager re-statement of the formula.

At the shapes of ResNet-50's AN layers (bn2 of every bottleneck: C = 64, 128, 256, 512 on maps of
image_size/4 ... image_size/32, K = 10, 10, 20, 20), each candidate is timed round-robin:

- ``batchnorm``: ``nn.BatchNorm2d(C)``, what AN replaces;
- ``an``: :class:`~attentive_norm.AttentiveBatchNorm2d`, the fast path (layers/fused.py);
- ``composite``: the same layer's general route (BatchNorm standardisation, pooling, then the mixture as
  separate autograd ops; what TorchScript and SyncBatchNorm use);
- ``reference``: ``layers/reference.py``, the formula written out line by line, always eager (also
  under ``--compile``, which compiles the other three).

Three passes: ``train`` (training-mode forward and backward, the gradient of the input and of every
parameter), ``forward`` (training-mode forward, recording autograd) and ``eval`` (eval-mode forward
under ``torch.inference_mode``). Ratios are to ``batchnorm``, and ``an`` is also compared with
``reference`` (how much faster the fast path is than the eager formula); they are paired (the median
over rounds of the ratio of the two times measured in the same round, with a 95% confidence interval).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import AttentiveBatchNorm2d
from ..layers.reference import reference_for_layer
from .common import (
    Settings,
    format_markdown,
    format_table,
    interleaved_times,
    load_average,
    machine_info,
    num_threads,
    paired_ratio,
    summarise_times,
)

RESNET50_AN_LAYERS: tuple[tuple[int, int, int], ...] = (
    (64, 4, 10),
    (128, 8, 10),
    (256, 16, 20),
    (512, 32, 20),
)
"""(channels, stride of the map relative to the image, K) of ResNet-50's AN layers, one per stage."""

RESNET50_BLOCKS: dict[int, int] = {64: 3, 128: 4, 256: 6, 512: 3}
"""How many AN layers of each width ResNet-50-AN has (one per bottleneck): the ``added_ms`` column is
that many times the per-layer difference AN - BatchNorm, and their sum what the AN layers add to one
pass of the network."""

CANDIDATES: tuple[str, ...] = ("batchnorm", "an", "composite", "reference")
PASSES: tuple[str, ...] = ("train", "forward", "eval")

COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("shape", "N×C×H×W, K", "{}"),
    ("pass", "pass", "{}"),
    ("batchnorm_ms", "BatchNorm (ms)", "{:.3f}"),
    ("an_ms", "AN (ms)", "{:.3f}"),
    ("composite_ms", "AN composite (ms)", "{:.3f}"),
    ("reference_ms", "reference (ms)", "{:.3f}"),
    ("an_over_batchnorm", "AN / BN", "{:.2f}"),
    ("an_over_batchnorm_interval", "95% CI", "{}"),
    ("reference_over_an", "reference / AN", "{:.2f}"),
    ("reference_over_an_interval", "95% CI", "{}"),
    ("composite_over_an", "composite / AN", "{:.2f}"),
    ("added_ms", "added in ResNet-50 (ms)", "{:.2f}"),
)


class _Composite(nn.Module):
    """An AN layer forced onto its general (non-fused) route."""

    def __init__(self, layer: AttentiveBatchNorm2d) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer._mix(x, self.layer._standardise(x))


class _Reference(nn.Module):
    """``reference_attentive_batch_norm`` with the parameters and statistics of an AN layer."""

    def __init__(self, layer: AttentiveBatchNorm2d) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return reference_for_layer(self.layer, x, self.training)


def layer_shapes(batch_size: int, image_size: int) -> list[tuple[int, int, int, int, int]]:
    """(N, C, H, W, K) of ResNet-50's AN layers for a batch of square images."""
    return [
        (batch_size, c, max(image_size // s, 1), max(image_size // s, 1), k) for c, s, k in RESNET50_AN_LAYERS
    ]


def _candidates(channels: int, mixtures: int, settings: Settings) -> dict[str, nn.Module]:
    an = AttentiveBatchNorm2d(channels, mixtures)
    modules: dict[str, nn.Module] = {
        "batchnorm": nn.BatchNorm2d(channels),
        "an": an,
        "composite": _Composite(copy.deepcopy(an)),
        "reference": _Reference(copy.deepcopy(an)),
    }
    if settings.compile:
        # The reference stays eager: it is the yardstick "the eager re-statement of the formula"; the
        # compiled composite route shows what inductor makes of the formula written as separate ops.
        modules = {name: m if name == "reference" else torch.compile(m) for name, m in modules.items()}
    return modules


def _closures(
    modules: dict[str, nn.Module], x: Tensor, grad: Tensor, settings: Settings, which: str
) -> dict[str, Callable[[], None]]:
    def make(module: nn.Module) -> Callable[[], None]:
        params = [p for p in module.parameters() if p.requires_grad]

        def train() -> None:
            module.train()
            with settings.autocast():
                out = module(x)
            torch.autograd.grad(out, [x, *params], grad)

        def forward() -> None:
            module.train()
            with settings.autocast():
                module(x)

        def evaluate() -> None:
            module.eval()
            with torch.inference_mode(), settings.autocast():
                module(x)

        return {"train": train, "forward": forward, "eval": evaluate}[which]

    return {name: make(module) for name, module in modules.items()}


def benchmark_layers(
    settings: Settings | None = None,
    shapes: Sequence[tuple[int, int, int, int, int]] | None = None,
    passes: Sequence[str] = PASSES,
    candidates: Sequence[str] = CANDIDATES,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time the candidates at ``shapes`` ((N, C, H, W, K); default :func:`layer_shapes`) for each pass.
    Returns ``{"machine": ..., "rows": [...]}``, one row per shape and pass."""
    settings = settings or Settings()
    shapes = shapes or layer_shapes(settings.batch_size, settings.image_size)
    unknown = set(passes) - set(PASSES) or set(candidates) - set(CANDIDATES)
    if unknown:
        raise ValueError(f"unknown passes or candidates {sorted(unknown)}")
    log = log or (lambda message: None)
    dtype = torch.bfloat16 if settings.dtype == "bfloat16" else torch.float32
    rows: list[dict[str, Any]] = []
    with num_threads(settings.threads):
        info = machine_info(settings)
        for n, c, h, w, k in shapes:
            log(f"layer {n}x{c}x{h}x{w}, K={k}")
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(n, c, h, w, generator=generator).to(
                dtype=dtype, memory_format=settings.memory_format
            )
            x.requires_grad_()
            grad = torch.randn(x.shape, generator=generator).to(
                dtype=dtype, memory_format=settings.memory_format
            )
            modules = _candidates(c, k, settings)
            modules = {name: modules[name] for name in candidates}
            for which in passes:
                times = interleaved_times(
                    _closures(modules, x, grad, settings, which),
                    settings.warmup + (2 if settings.compile else 0),
                    settings.iterations,
                )
                row: dict[str, Any] = {"shape": f"{n}×{c}×{h}×{w}, K={k}", "pass": which}
                for name, values in times.items():
                    row[f"{name}_ms"] = summarise_times(values)["median_ms"]
                    row[f"{name}_times_ms"] = [t * 1e3 for t in values]
                _add_layer_ratios(row)
                if "an_ms" in row and "batchnorm_ms" in row and c in RESNET50_BLOCKS:
                    row["added_ms"] = RESNET50_BLOCKS[c] * (row["an_ms"] - row["batchnorm_ms"])
                rows.append(row)
        info["load_average_end"] = load_average()
    return {"kind": "layer", "machine": info, "rows": rows, "added_per_network_ms": added_per_network(rows)}


def added_per_network(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per pass, the time ResNet-50-AN's AN layers add over the BatchNorms they replace: the sum of
    the rows' ``added_ms`` (complete when the rows cover the four widths)."""
    totals: dict[str, float] = {}
    for row in rows:
        if row.get("added_ms") is not None:
            totals[row["pass"]] = totals.get(row["pass"], 0.0) + row["added_ms"]
    return totals


def _add_layer_ratios(row: dict[str, Any]) -> None:
    """Paired ratios: the median over rounds of the ratio of the two times measured in the same round,
    with its 95% confidence interval (from 6 rounds on)."""

    def ratio(a: str, b: str) -> None:
        key = f"{a}_over_{b}"
        value, interval = paired_ratio(row.get(f"{a}_times_ms"), row.get(f"{b}_times_ms")) or (None, None)
        row[key] = value
        row[f"{key}_interval"] = f"{interval[0]:.2f}-{interval[1]:.2f}" if interval else None

    ratio("an", "batchnorm")
    ratio("reference", "an")
    ratio("composite", "an")


def layer_table(result: dict[str, Any], markdown: bool = False) -> str:
    rows = result["rows"]
    columns = [c for c in COLUMNS if any(row.get(c[0]) is not None for row in rows)]
    return format_markdown(rows, columns) if markdown else format_table(rows, columns)
