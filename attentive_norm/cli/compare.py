"""``attentive-norm compare``: train several models with several seeds on the same data, then report
the mean and spread of each model's best top-1 as a table (also ``compare.csv``) and a plot.

Every run is an ordinary training run (same flags as ``train``) in a sub-folder of the comparison's
folder. The default compares ResNet-20 with BN and with AN on the bundled digits over three seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

from ..engine import distributed
from ..engine.config import ConfigError, make_config, read_yaml_config
from ..engine.plots import plot_comparison
from ..engine.report import write_csv
from ..engine.trainer import train
from ..models import get_model_entrypoint
from .errors import reports_errors
from .train import add_config_arguments, flag_overrides


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="train several models over several seeds and compare their top-1",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", default="resnet20,resnet20_an", help="comma-separated model names")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--config", help="YAML file or preset applied to every run")
    parser.add_argument("--name", help="comparison folder name (default: compare-<time stamp>)")
    add_config_arguments(parser, skip=("model", "seed", "name"))
    parser.set_defaults(func=run)


@reports_errors
def run(args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as exc:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from exc
    if not models or not seeds:
        raise ConfigError("compare needs at least one model and one seed")
    for name in models:
        try:
            get_model_entrypoint(name)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    base = make_config(read_yaml_config(args.config) if args.config else {}, flag_overrides(args))
    folder = Path(base.output) / (args.name or f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    env = distributed.setup(base.device)
    runs = []
    try:
        for name in models:
            for seed in seeds:
                cfg = dataclasses.replace(
                    base,
                    model=name,
                    seed=seed,
                    subset_seed=seeds[0] if base.subset_seed is None else base.subset_seed,  # same images
                    output=str(folder),
                    name=f"{name}-seed{seed}",
                )
                result = train(cfg)
                runs.append(
                    {
                        "model": name,
                        "seed": seed,
                        "best_top1": result.best_top1,
                        "best_epoch": result.best_epoch,
                        "final_top1": result.final["val_top1"],
                        "final_top5": result.final["val_top5"],
                    }
                )
    finally:
        distributed.cleanup()
    if env.is_main:
        summary = summarise(runs)
        print(format_table(summary))
        write_csv(runs, folder / "runs.csv")
        write_csv(summary, folder / "compare.csv")
        best = {name: [r["best_top1"] for r in runs if r["model"] == name] for name in models}
        plot_comparison(best, folder / "compare.png", metric="best top-1 (%)")
        print(f"comparison folder: {folder}")
    return 0


def summarise(runs: list[dict]) -> list[dict]:
    """Per model: number of runs and mean, standard deviation, min and max of the best top-1."""
    rows = []
    for name in dict.fromkeys(r["model"] for r in runs):
        values = [r["best_top1"] for r in runs if r["model"] == name]
        rows.append(
            {
                "model": name,
                "runs": len(values),
                "top1_mean": statistics.fmean(values),
                "top1_std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "top1_min": min(values),
                "top1_max": max(values),
            }
        )
    return rows


def format_table(summary: list[dict]) -> str:
    width = max(len("model"), *(len(r["model"]) for r in summary))
    lines = [f"{'model':<{width}}  runs  best top-1 (mean ± std)     min     max"]
    for r in summary:
        lines.append(
            f"{r['model']:<{width}}  {r['runs']:>4}  {r['top1_mean']:>12.2f} ± {r['top1_std']:<5.2f}"
            f"     {r['top1_min']:>6.2f}  {r['top1_max']:>6.2f}"
        )
    return "\n".join(lines)
