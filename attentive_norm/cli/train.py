"""``attentive-norm train``: train a model (default: ResNet-20-AN on the bundled digits, on CPU).

Settings come from the defaults, then ``--config`` (a YAML file or a shipped preset such as
``resnet50_an``), then the flags given on the command line. ``--resume`` continues a run from its
latest checkpoint, with the checkpoint's settings unless flags override them.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

import yaml

from ..engine import distributed, state
from ..engine.config import (
    config_fields,
    dump_yaml,
    field_types,
    make_config,
    preset_names,
    read_yaml_config,
)
from ..engine.trainer import train
from .errors import reports_errors


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model (default: AN on the bundled digits, a few CPU minutes)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help=f"YAML file or preset ({', '.join(preset_names())})")
    parser.add_argument("--resume", help="continue this run: its folder or a checkpoint file")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved settings as YAML (usable with --config) and exit without training",
    )
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per ``TrainConfig`` field; a flag left out keeps the value from the YAML or defaults."""
    types_ = field_types()
    group = parser.add_argument_group("training settings (override --config)")
    for f in config_fields():
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = types_[f.name]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        helptext = f"{f.metadata['help']} (default: {default})"
        if kind is bool:
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=helptext
            )
        else:
            group.add_argument(
                flag, type=_parser_for(kind), default=argparse.SUPPRESS, metavar=f.name.upper(), help=helptext
            )


def _parser_for(kind: Any) -> Any:
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    base = next(k for k in options if k is not type(None))
    optional = type(None) in options

    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        if typing.get_origin(base) is dict:
            value = yaml.safe_load(text)
            if not isinstance(value, dict):
                raise argparse.ArgumentTypeError(
                    f"expected a YAML mapping such as '{{placement: bn12}}', got {text!r}"
                )
            return value
        return base(text)

    parse.__name__ = getattr(base, "__name__", "value")
    return parse


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags on the command line."""
    names = {f.name for f in config_fields()}
    return {k: v for k, v in vars(args).items() if k in names}


def resolve_config(args: argparse.Namespace) -> Any:
    """Defaults < the resumed checkpoint's settings < ``--config`` < flags."""
    layers: list[dict[str, Any]] = []
    if getattr(args, "resume", None):
        layers.append(state.load(args.resume)["config"])
    if args.config:
        layers.append(read_yaml_config(args.config))
    layers.append(flag_overrides(args))
    return make_config(*layers, source="settings")


@reports_errors
def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if args.print_config:
        print(dump_yaml(cfg, f"peak LR {cfg.peak_lr():.6g} (lr x batch_size / 256)"), end="")
        return 0
    try:
        train(cfg, resume=args.resume)
    except KeyboardInterrupt:  # the trainer said what is kept and how to continue
        return 130
    finally:
        distributed.cleanup()
    return 0
