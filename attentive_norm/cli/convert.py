"""``attentive-norm convert``: a checkpoint (the authors' or ours) to a validated safetensors weight file.

The source is read without running code from it, loaded into the named model (so a wrong
architecture or a damaged file is refused here, not later), and the model's weights are written as
safetensors with a metadata header (model, num_classes, source, format version, SHA-256), then read
back and compared. For the authors' apex fp16 files the fp32 master weights are used when they match
the fp16 weights unambiguously (``--fp16`` keeps the fp16 weights).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..checkpoint import CheckpointError, load_checkpoint, load_weights, read_checkpoint, save_weights
from ..models import create_model
from .errors import reports_errors

_NAMED_BY_US = ("training", "safetensors")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a checkpoint (the authors' or ours) to a safetensors weight file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "src", metavar="SRC", help="checkpoint to convert (e.g. the authors' model_best.pth.tar)"
    )
    parser.add_argument("dst", metavar="DST", help="safetensors file to write (e.g. resnet50_an.safetensors)")
    parser.add_argument(
        "--model",
        help="registered model name (default: the one our training checkpoint or weight file names)",
    )
    parser.add_argument(
        "--num-classes", type=int, help="classifier outputs (default: what the checkpoint says, else 1000)"
    )
    parser.add_argument(
        "--fp16", action="store_true", help="keep the authors' fp16 weights, not the fp32 masters"
    )
    parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    parser.set_defaults(func=reports_errors(run))


def run(args: argparse.Namespace) -> int:
    src, dst = Path(args.src), Path(args.dst)
    if dst.exists() and not args.force:
        raise CheckpointError(f"{dst} exists (use --force to overwrite it)")
    contents = read_checkpoint(src)
    named = contents.model_name if contents.source_format in _NAMED_BY_US else None
    name = args.model or named
    if name is None:
        raise CheckpointError(
            f"{src} ({contents.source_format}) does not name a model of the zoo: give --model"
        )
    num_classes = args.num_classes or contents.num_classes or 1000
    kwargs = contents.model_kwargs if name == named else {}
    try:
        model = create_model(name, num_classes=num_classes, **kwargs)
    except (ValueError, TypeError) as exc:
        print(f"attentive-norm: error: cannot build model {name!r}: {exc}", file=sys.stderr)
        return 2
    info = load_checkpoint(model, contents, use_fp32_master=not args.fp16)
    metadata = {"model": name, "num_classes": num_classes, "source": f"{src.name} ({info.source_format})"}
    if kwargs:
        metadata["model_kwargs"] = json.dumps(kwargs, sort_keys=True)
    save_weights(model, dst, metadata)
    _verify(model, dst)
    print(f"{src} -> {dst}: {name}, {num_classes} classes; {info.note}")
    return 0


def _verify(model: torch.nn.Module, dst: Path) -> None:
    """Read the written file back (checking its SHA-256) and compare it with the model's state."""
    tensors, _ = load_weights(dst)
    state = model.state_dict()
    if tensors.keys() != state.keys() or not all(torch.equal(tensors[k], v.cpu()) for k, v in state.items()):
        raise CheckpointError(f"{dst}: the written file does not read back as the model's weights")
