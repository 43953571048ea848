"""``attentive-norm validate``: top-1/top-5 of a checkpoint on a validation set, saved as JSON and CSV.

Accepts this project's files (training checkpoints, which also record the data, classes and
evaluation transform, and safetensors weight files, which name their model) and the authors'
``model_best.pth.tar`` files (give ``--model`` and ``--data``). Evaluation: Resize(256) + CenterCrop(224)
for ImageFolder data unless the checkpoint or the flags say otherwise.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..checkpoint import load_checkpoint, read_checkpoint
from ..data.digits import digits_datasets
from ..data.folder import eval_folder
from ..data.loader import Augmented, eval_loader, eval_transform
from ..engine import distributed, state
from ..engine.config import AMP_MODES, ConfigError
from ..engine.evaluate import evaluate
from ..engine.report import write_csv
from ..engine.run_folder import first_free
from ..engine.trainer import build_model
from .errors import reports_errors


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="top-1/top-5 of a checkpoint (ours or the authors')",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint file (or run folder: its latest checkpoint)"
    )
    parser.add_argument(
        "--model", help="registered model name (default: the one a training checkpoint names)"
    )
    parser.add_argument(
        "--data",
        help="ImageFolder root (uses ROOT/val if present, else ROOT's class folders); "
        "default: the data a training checkpoint was trained on",
    )
    parser.add_argument(
        "--image-size", type=positive_int, help="centre-crop size (default: the checkpoint's, else 224)"
    )
    parser.add_argument(
        "--eval-resize",
        type=positive_int,
        help="shorter side before cropping (default: checkpoint's, else 256)",
    )
    parser.add_argument("--interpolation", choices=("bilinear", "bicubic"), help="resize interpolation")
    parser.add_argument(
        "--batch-size", type=positive_int, default=100, help="images per batch and process (default: 100)"
    )
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        help="data-loading processes (default: 0 for digits, else up to 8)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--amp", default="none", choices=AMP_MODES, help="autocast dtype (default: none)")
    parser.add_argument(
        "--output",
        help="results path without extension; writes .json and .csv "
        "(default: validate-<checkpoint> in a training checkpoint's run folder, else runs/validate/; "
        "a new name if that exists)",
    )
    parser.set_defaults(func=run)


@reports_errors
def run(args: argparse.Namespace) -> int:
    env = distributed.setup(args.device)
    try:
        results = validate(args, env)
    finally:
        distributed.cleanup()
    if env.is_main:
        print(
            f"{results['model']}: top-1 {results['top1']:.2f}%  top-5 {results['top5']:.2f}%  "
            f"loss {results['loss']:.4f}  ({results['images']} images, {results['skipped']} skipped)"
        )
        print(f"results: {results['output']}.json, {results['output']}.csv")
    return 0


def validate(args: argparse.Namespace, env: distributed.DistEnv) -> dict[str, Any]:
    path = state.resolve(args.checkpoint)
    contents = read_checkpoint(path)
    # Our files name their model; the authors' "arch" does not tell BN from AN, so it is not trusted.
    ours = contents.source_format in ("training", "safetensors")
    trained = state.load(path) if contents.source_format == "training" else None
    settings = trained["config"] if trained else {}
    name = args.model or (contents.model_name if ours else None)
    if name is None:
        raise ConfigError(f"{path} does not name its model; pass --model (attentive-norm models lists them)")
    data = args.data if args.data is not None else settings.get("data")
    if data is None and trained is None:
        raise ConfigError("--data is required for checkpoints other than those `attentive-norm train` writes")
    image_size = args.image_size or settings.get("image_size", 224)
    resize = args.eval_resize or settings.get("eval_resize") or (256 if trained is None else None)
    interpolation = args.interpolation or settings.get("interpolation", "bilinear")
    classes = trained["classes"] if trained and data is not None else None  # the model's label order
    source = digits_datasets(image_size)[1] if data is None else eval_folder(data, classes=classes)

    model_args = {
        "model": name,
        "num_classes": contents.num_classes if ours and contents.num_classes else len(source.classes),
        "model_kwargs": contents.model_kwargs if ours and contents.model_name == name else {},
    }
    if model_args["num_classes"] < len(source.classes):
        raise ConfigError(
            f"the data has {len(source.classes)} classes, the model {name} only {model_args['num_classes']}"
        )
    model = build_model(model_args)
    info = load_checkpoint(model, path)
    model.to(env.device)

    workers = args.workers if args.workers is not None else (0 if data is None else min(8, env.cpus()))
    dataset = Augmented(source, eval_transform(data, image_size, resize, interpolation), seed=0)
    loader = eval_loader(
        dataset, args.batch_size, workers, env.world_size, env.rank, env.device.type == "cuda"
    )
    start = time.perf_counter()
    metrics = evaluate(model, loader, env.device, amp=args.amp)
    output = Path(args.output) if args.output else _default_output(path, name, trained is not None)
    results = {
        "model": name,
        "checkpoint": str(path),
        "checkpoint_format": info.source_format,
        "weights": info.weights,
        "data": data or "bundled digits",
        "image_size": image_size,
        "eval_resize": resize,
        **metrics,
        "seconds": round(time.perf_counter() - start, 2),
        "output": str(output),
    }
    if env.is_main:
        output.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{output}.json").write_text(json.dumps(results, indent=2) + "\n")
        write_csv([results], f"{output}.csv")
    return results


def _default_output(path: Path, model: str, ours: bool) -> Path:
    """``validate-<checkpoint>`` beside our checkpoints, else ``runs/validate/<model>-<file>``; a
    numbered name where results exist (the authors' files are all ``model_best.pth.tar``)."""
    folder = path.parent if ours else Path("runs") / "validate"
    stem = folder / (f"validate-{path.stem}" if ours else f"{model}-{path.stem}")
    return first_free(stem, lambda p: Path(f"{p}.json").exists() or Path(f"{p}.csv").exists())


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value
