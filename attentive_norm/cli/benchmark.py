"""``attentive-norm benchmark``: speed and memory of AN against BatchNorm, whole networks or one layer.

Networks (default): parameters, FLOPs, training step, inference, images/s and peak memory of each
model, measured in one process with interleaved runs; ratios are to the first model. ``--layer``:
one AN layer against ``nn.BatchNorm2d`` and the plain eager formula, at ResNet-50's AN shapes.

Writes ``<output>/<name>.json``, ``.csv``, ``.md`` (the table in Markdown) and ``.png`` (the ratios).
Timings need a quiet machine: the load average is recorded before and after. ``--quick`` is a smoke
test in seconds (tiny models or shapes, two iterations).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..benchmarks.common import Settings, plot_ratios, write_csv, write_json
from ..benchmarks.layer import benchmark_layers, layer_table
from ..benchmarks.network import DEFAULT_MODELS, PLOT_METRICS, QUICK_MODELS, benchmark_networks, network_table
from .errors import reports_errors

SIZES = {"batch_size": 16, "image_size": 224, "warmup": 2, "iterations": 10}
"""Defaults of the size flags (``--quick`` sets its own)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="speed and memory of AN versus BatchNorm (networks, or one layer with --layer)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models",
        help=f"comma-separated zoo names, or timm names with the prefix 'timm:'; the first is the "
        f"baseline (default: {','.join(DEFAULT_MODELS)})",
    )
    parser.add_argument("--layer", action="store_true", help="benchmark one AN layer instead of networks")
    parser.add_argument("--batch-size", type=int, help=f"images per step (default {SIZES['batch_size']})")
    parser.add_argument("--image-size", type=int, help=f"input side (default {SIZES['image_size']})")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16 runs under autocast")  # fmt: skip
    parser.add_argument("--channels-last", action="store_true", help="channels_last inputs and weights")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (inductor)")
    parser.add_argument("--warmup", type=int, help=f"untimed runs per model (default {SIZES['warmup']})")
    parser.add_argument("--iterations", type=int, help=f"timed runs of each (default {SIZES['iterations']})")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: tiny models/shapes, batch 2, 1 warm-up, 2 iterations "
                             "(sets the sizes itself)")  # fmt: skip
    parser.add_argument("--output", default="runs/benchmarks", help="folder for the result files")
    parser.add_argument("--name", help="file name stem (default: network-<time> or layer-<time>)")
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Settings:
    given = [f"--{k.replace('_', '-')}" for k in SIZES if getattr(args, k) is not None]
    if args.quick and given:
        raise ValueError(f"--quick sets the sizes itself: drop {', '.join(given)} or --quick")
    if args.layer and args.models:
        raise ValueError("--layer measures one layer at ResNet-50's shapes, not --models: give one of them")
    if args.quick:
        # layer shapes go down to image/32: keep maps >= 2×2
        sizes = {"batch_size": 2, "image_size": 64 if args.layer else 32, "warmup": 1, "iterations": 2}
    else:
        sizes = {k: default if getattr(args, k) is None else getattr(args, k) for k, default in SIZES.items()}
    return Settings(
        threads=args.threads,
        dtype=args.dtype,
        channels_last=args.channels_last,
        compile=args.compile,
        **sizes,
    )


def command_line(args: argparse.Namespace, settings: Settings, models: list[str] | None) -> str:
    """The command that repeats this run (every setting explicit)."""
    parts = ["attentive-norm", "benchmark"]
    if args.layer:
        parts.append("--layer")
    elif models:
        parts += ["--models", ",".join(models)]
    if args.quick:
        parts.append("--quick")
    else:
        parts += [
            f"--batch-size {settings.batch_size}",
            f"--image-size {settings.image_size}",
            f"--warmup {settings.warmup}",
            f"--iterations {settings.iterations}",
        ]
    parts += [f"--threads {args.threads}", f"--dtype {args.dtype}"]
    parts += [
        flag for flag, on in (("--channels-last", args.channels_last), ("--compile", args.compile)) if on
    ]
    if args.no_memory and not args.layer:
        parts.append("--no-memory")
    return " ".join(parts)


@reports_errors(also=(ValueError,))
def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    models: list[str] | None = None
    kind = "layer" if args.layer else "network"
    stem = args.name or f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = Path(args.output)
    try:  # before measuring: a run must not end without its files
        (folder / stem).parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise ValueError(f"cannot write the results under {folder / stem}: {exc}") from exc

    def log(message: str) -> None:
        print(f"[benchmark] {message}", flush=True)

    if args.layer:
        result = benchmark_layers(settings, log=log)
        table, markdown = layer_table(result), layer_table(result, markdown=True)
        added = ", ".join(f"{name} {ms:.2f} ms" for name, ms in result["added_per_network_ms"].items())
        table += f"\nAN layers add to one ResNet-50 pass (sum of 'added'): {added}"
    else:
        if args.models:
            models = [m.strip() for m in args.models.split(",") if m.strip()]
        else:
            models = list(QUICK_MODELS if args.quick else DEFAULT_MODELS)
        result = benchmark_networks(models, settings, measure_memory=not args.no_memory, log=log)
        table, markdown = network_table(result), network_table(result, markdown=True)
    result["command"] = command_line(args, settings, models)
    machine = result["machine"]
    header = (
        f"{machine['cpu']}, {settings.threads} threads, torch {machine['torch']}, "
        f"attentive-norm {machine['attentive_norm']}, AN inference route {machine['inference_route']}, "
        f"load average {machine['load_average']} -> {machine['load_average_end']}"
    )
    print(result["command"])
    print(header)
    print(table)

    write_json(result, folder / f"{stem}.json")
    write_csv(result["rows"], folder / f"{stem}.csv")
    (folder / f"{stem}.md").write_text(f"`{result['command']}`\n\n{header}\n\n{markdown}\n")
    _plot(result, settings, folder / f"{stem}.png")
    print(f"wrote {folder / stem}.{{json,csv,md,png}}")
    return 0


def _plot(result: dict, settings: Settings, path: Path) -> None:
    rows = result["rows"]
    setting = (
        f"batch {settings.batch_size}, {settings.image_size}px, {settings.threads} threads, {settings.dtype}"
        f"{', channels_last' if settings.channels_last else ''}{', compiled' if settings.compile else ''}"
    )
    if result["kind"] == "network":
        plot_ratios(rows, "model", PLOT_METRICS, path, f"networks ({setting})", rows[0]["model"])
        return
    plot_rows = []
    for row in rows:
        plot_rows.append(
            {
                "label": f"{row['shape'].split(',')[0]} {row['pass']}",
                "an_ratio": row.get("an_over_batchnorm"),
                "reference_ratio": (row.get("reference_ms") or 0) / row["batchnorm_ms"]
                if row.get("batchnorm_ms")
                else None,
                "composite_ratio": (row.get("composite_ms") or 0) / row["batchnorm_ms"]
                if row.get("batchnorm_ms")
                else None,
            }
        )
    plot_ratios(
        plot_rows,
        "label",
        (("an", "AN (fast path)"), ("composite", "AN composite"), ("reference", "reference formula")),
        path,
        f"one AN layer ({setting})",
        "nn.BatchNorm2d",
    )
