"""``attentive-norm detect train|eval``: Mask R-CNN with AN on COCO-format data.

Without arguments, ``detect train`` runs the embedded default (preset ``shapes_demo``): it generates a
small synthetic dataset of shapes with instance masks, trains briefly on the CPU, evaluates with
COCOeval, prints the AP table and draws predictions. Under ``torchrun`` training is distributed.
``detect eval`` writes its results to a new folder ``eval-<n>`` beside the checkpoint (or --output-dir).
Needs pycocotools: pip install "attentive-norm[detection]".
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import reports_errors

DEFAULT_PRESET = "shapes_demo"


class MissingExtraError(ImportError):
    """pycocotools, the optional extra ``detect`` needs, cannot be imported."""


def _require_pycocotools() -> None:
    """A one-line error instead of a traceback when the ``detection`` extra is not installed."""
    try:
        import pycocotools.coco  # noqa: F401  (imports the compiled pycocotools.mask too)
    except ImportError as e:
        raise MissingExtraError(
            f'detect needs pycocotools ({e}); install it with: pip install "attentive-norm[detection]"'
        ) from e


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    # The detection package imports its pycocotools-based modules on first use, so the parser (and every
    # other command) works without the extra.
    from ..detection.config import list_presets

    parser = subparsers.add_parser(
        "detect",
        help="Mask R-CNN with AN backbones and heads on COCO-format data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)
    commands = parser.add_subparsers(dest="detect_command", metavar="{train,eval}")
    presets = ", ".join(list_presets())

    train = commands.add_parser("train", help="train (and evaluate) a detector", description=__doc__)
    _common(train, presets, default_config=DEFAULT_PRESET)
    train.add_argument("--train-images", help="folder of the training images")
    train.add_argument("--train-ann", help="COCO instances JSON of the training images")
    train.add_argument(
        "--resume", metavar="PATH|auto", help="continue from a checkpoint (auto: output-dir/last.pth)"
    )
    train.add_argument("--backbone", help="zoo model name (model.backbone)")
    train.add_argument("--pretrained-backbone", metavar="PATH", help="ImageNet checkpoint of the backbone")
    train.add_argument(
        "--head-norm", choices=("none", "bn", "gn", "an_gn"), help="box-head norm (model.head_norm)"
    )
    train.add_argument("--epochs", type=int, help="solver.epochs")
    train.add_argument("--batch-size", type=int, help="images per process (solver.batch_size)")
    train.add_argument("--lr", type=float, help="learning rate for solver.base_batch_size images")
    train.add_argument("--max-iters", type=int, help="stop after this many iterations (solver.max_iters)")
    train.add_argument("--output-dir", help="where last.pth, metrics.json and vis/ go (output_dir)")
    train.set_defaults(func=reports_errors(_train, also=(MissingExtraError,)))

    evaluate = commands.add_parser(
        "eval", help="evaluate a detection checkpoint with COCOeval", description=__doc__
    )
    evaluate.add_argument("--checkpoint", required=True, help="a checkpoint written by detect train")
    _common(evaluate, presets, default_config=None)
    evaluate.add_argument(
        "--output-dir",
        help="where metrics.json and vis/ go (default: a new folder eval-<n> beside the checkpoint)",
    )
    evaluate.set_defaults(func=reports_errors(_eval, also=(MissingExtraError,)))


def _common(parser: argparse.ArgumentParser, presets: str, default_config: str | None) -> None:
    default = f" (default: {default_config})" if default_config else " (default: the checkpoint's own)"
    parser.add_argument("--config", default=default_config, help=f"YAML file or preset: {presets}{default}")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set solver.lr=0.01 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--val-images", help="folder of the validation images")
    parser.add_argument("--val-ann", help="COCO instances JSON of the validation images")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="device (default: auto)")
    parser.add_argument("--visualize", type=int, metavar="N", help="draw predictions on N validation images")


_FLAGS: dict[str, str] = {
    "train_images": "data.train_images",
    "train_ann": "data.train_ann",
    "val_images": "data.val_images",
    "val_ann": "data.val_ann",
    "output_dir": "output_dir",
    "device": "device",
    "visualize": "visualize",
    "backbone": "model.backbone",
    "pretrained_backbone": "model.pretrained_backbone",
    "head_norm": "model.head_norm",
    "epochs": "solver.epochs",
    "batch_size": "solver.batch_size",
    "lr": "solver.lr",
    "max_iters": "solver.max_iters",
}


def _overrides(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> list[str]:
    """``--set`` values, then the dedicated flags but those in ``skip`` (the flags win)."""
    flags = [
        f"{key}={getattr(args, name)}"
        for name, key in _FLAGS.items()
        if name not in skip and getattr(args, name, None) is not None
    ]
    return [*args.overrides, *flags]


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout
    )


def _train(args: argparse.Namespace) -> int:
    _require_pycocotools()
    from ..detection.config import load_config
    from ..detection.engine import train

    _setup_logging()
    cfg = load_config(args.config, _overrides(args))
    train(cfg, resume=args.resume)
    return 0


def _eval(args: argparse.Namespace) -> int:
    _require_pycocotools()
    from ..detection.config import load_config
    from ..detection.engine import evaluate

    _setup_logging()
    overrides = _overrides(args, skip=("output_dir",))  # where this evaluation writes, not a setting
    cfg = load_config(args.config, overrides) if args.config else None
    evaluate(args.checkpoint, cfg, overrides=() if cfg else overrides, output_dir=args.output_dir)
    return 0
