"""What both benchmarks share: settings, timing, peak memory, the machine, ratios, tables and files."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..layers.native import native_status

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""``--dtype``: float32, or bfloat16 autocast (weights and statistics stay float32)."""


@dataclasses.dataclass
class Settings:
    """How to run: batch, image size, threads, precision, memory format, compilation, repetitions."""

    batch_size: int = 16
    image_size: int = 224
    threads: int = 2
    dtype: str = "float32"
    channels_last: bool = False
    compile: bool = False
    warmup: int = 2
    iterations: int = 10
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("batch_size", "image_size", "threads", "iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for ``dtype="bfloat16"``, else nothing."""
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=DTYPES[self.dtype])


def machine_info(settings: Settings | None = None) -> dict[str, Any]:
    """The machine a result was measured on: CPU model, cores, threads, load, library versions, and
    the AN layers' CPU inference route (the native kernel, or PyTorch operators and why)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": load_average(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with contextlib.suppress(ImportError):
        import timm

        info["timm"] = timm.__version__
    info["attentive_norm"] = _package_version()
    compiled = settings is not None and settings.compile
    info["inference_route"] = "pytorch (torch.compile: plain ops)" if compiled else native_status()
    if settings is not None:
        info["settings"] = dataclasses.asdict(settings)
    return info


def _package_version() -> str:
    """This package's version, with the git commit when it runs from a checkout (so a result names the
    code that produced it)."""
    from .. import __version__

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return __version__
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{commit}" if commit else __version__


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def num_threads(threads: int) -> Iterator[None]:
    """Run with ``threads`` intra-op threads, restoring the previous number afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def time_once(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call (CPU work is synchronous; CUDA is synchronised)."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_times(
    candidates: dict[str, Callable[[], object]], warmup: int, iterations: int
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, measured round-robin (one call of each per round, order
    reversed every other round) so that load changes and thermal drift hit all of them alike."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(iterations):
        for name in names if round_index % 2 == 0 else reversed(names):
            times[name].append(time_once(candidates[name]))
    return times


def summarise_times(times: Sequence[float]) -> dict[str, float]:
    """Median (the reported value), minimum and spread of a list of seconds, in milliseconds."""
    ms = [t * 1e3 for t in times]
    return {
        "median_ms": statistics.median(ms),
        "min_ms": min(ms),
        "max_ms": max(ms),
    }


def peak_memory_bytes(fn: Callable[[], object]) -> int:
    """Peak of the bytes allocated by ``fn`` and not yet freed, over its run, from the profiler's record
    of every allocator call (CPU; on CUDA, ``torch.cuda.max_memory_allocated``). Memory that existed
    before the call (parameters, inputs) is not included."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    total = peak = 0
    for event in events:
        total += event.nbytes()
        peak = max(peak, total)
    return peak


def tensor_bytes(tensors: Iterator[torch.Tensor]) -> int:
    """Bytes of distinct tensor storages (shared ones counted once)."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in seen or storage.nbytes() == 0:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def add_ratios(rows: list[dict[str, Any]], keys: Sequence[str], baseline: int = 0) -> None:
    """Add ``<key>_ratio`` = value / the ``baseline`` row's value to every row (None where either is
    missing or the baseline is 0)."""
    if not rows:
        return
    base = rows[baseline]
    for row in rows:
        for key in keys:
            value, reference = row.get(key), base.get(key)
            ratio = None
            if value is not None and reference:
                ratio = value / reference
            row[f"{key}_ratio"] = ratio


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free confidence interval for the median of ``values``: the order statistics
    ``(x_(k), x_(n+1-k))`` with the largest ``k`` for which ``P(Binomial(n, 1/2) < k) <= (1 - confidence)/2``
    (None when ``n`` is too small for that confidence: at 95%, fewer than 6 values)."""
    n = len(values)
    tail = (1.0 - confidence) / 2.0
    k, below = 0, 0.0  # below = P(Binomial(n, 1/2) < k + 1) as k grows
    while k < n // 2:
        below += math.comb(n, k) / 2**n
        if below > tail:
            break
        k += 1
    if k == 0:
        return None
    ordered = sorted(values)
    return ordered[k - 1], ordered[n - k]


def paired_ratio(
    values: Sequence[float] | None, reference: Sequence[float] | None
) -> tuple[float, tuple[float, float] | None] | None:
    """The median over rounds of ``values[r] / reference[r]`` (times measured in the same round) and its
    95% confidence interval (:func:`median_interval`); None unless both lists are complete and match."""
    if not values or not reference or len(values) != len(reference) or not all(reference):
        return None
    per_round = [v / r for v, r in zip(values, reference)]
    return statistics.median(per_round), median_interval(per_round)


def add_paired_ratios(rows: list[dict[str, Any]], keys: Sequence[str], baseline: int = 0) -> None:
    """Add ``<key>_paired_ratio``: the median over rounds of ``row[key][r] / baseline[key][r]`` for lists
    of per-round times measured round-robin, and ``<key>_paired_low``/``_high``, its 95% confidence
    interval (:func:`median_interval`; None with fewer than 6 rounds), also as the text
    ``<key>_paired_interval`` for tables. Each pair was measured seconds apart, so a change of load
    between rounds cancels out; the ratio of medians does not have that property."""
    if not rows:
        return
    base = rows[baseline]
    for row in rows:
        for key in keys:
            ratio, interval = paired_ratio(row.get(key), base.get(key)) or (None, None)
            stem = key.removesuffix("_times_ms")
            row[f"{stem}_paired_ratio"] = ratio
            row[f"{stem}_paired_low"], row[f"{stem}_paired_high"] = interval or (None, None)
            row[f"{stem}_paired_interval"] = f"{interval[0]:.3f}-{interval[1]:.3f}" if interval else None


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A plain-text table: ``columns`` are (key, header, format); missing values print as '-'."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        line = []
        for key, _, fmt in columns:
            value = row.get(key)
            line.append("-" if value is None else fmt.format(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = []
    for index, line in enumerate(cells):
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
        )
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """The same table in Markdown (for docs/benchmarks.md)."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |"]
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|")
    for row in rows:
        values = ["-" if row.get(k) is None else fmt.format(row[k]) for k, _, fmt in columns]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


def write_json(payload: dict[str, Any], path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """One row per result, scalar fields only, union of keys as the header (first-seen order)."""
    import csv

    keys: list[str] = []
    flat = [{k: v for k, v in row.items() if not isinstance(v, (list, dict))} for row in rows]
    for row in flat:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(flat)


def plotted_metrics(
    rows: Sequence[dict[str, Any]], metrics: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The metrics some row has a ratio for (``--no-memory`` leaves the memory ratios out: no bars at 0)."""
    return [(key, name) for key, name in metrics if any(row.get(f"{key}_ratio") is not None for row in rows)]


def plot_ratios(
    rows: Sequence[dict[str, Any]],
    label_key: str,
    metrics: Sequence[tuple[str, str]],
    path: str | os.PathLike,
    title: str,
    baseline_label: str,
) -> None:
    """Grouped bars: for each row, the ratio of each metric (``<key>_ratio``) to the baseline row, with
    a line at 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(row[label_key]) for row in rows]
    metrics = plotted_metrics(rows, metrics)
    width = 0.8 / max(len(metrics), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows) * max(len(metrics), 1) * 0.5 + 3), 4.2))
    for index, (key, name) in enumerate(metrics):
        values = [row.get(f"{key}_ratio") or 0.0 for row in rows]
        positions = [i + (index - (len(metrics) - 1) / 2) * width for i in range(len(rows))]
        bars = ax.bar(positions, values, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)), labels, rotation=20, ha="right")
    ax.set_ylabel(f"ratio to {baseline_label}")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
