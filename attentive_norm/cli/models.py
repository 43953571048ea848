"""``attentive-norm models``: the zoo with measured parameters and FLOPs next to the paper's figures."""

from __future__ import annotations

import argparse

import torch

from ..models import create_model, list_models
from ..models.flops import count_flops, count_params
from ..models.published import PUBLISHED, params_match

_SMALL_IMAGE_MODELS = ("resnet20", "resnet20_an", "resnet56", "resnet56_an")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the zoo with measured params/FLOPs and the paper's figures",
        description=__doc__,
    )
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style name filter, e.g. '*_an'")
    parser.add_argument("--flops", action="store_true", help="also count FLOPs (MACs) at 224x224 (32x32)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.set_defaults(func=run)


def _format_params(value: int | float | None) -> str:
    if value is None:
        return ""
    return f"{value:,}" if isinstance(value, int) else f"{value:.3f}M"


@torch.no_grad()  # not torch.set_grad_enabled(False): that would outlive the command (in-process callers)
def run(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        raise SystemExit(f"no model matches {args.pattern!r}; models: {', '.join(list_models())}")
    header = ["model", "params", "paper params", "match", "GFLOPs", "paper top-1"]
    rows = []
    for name in names:
        model = create_model(name, num_classes=10 if name in _SMALL_IMAGE_MODELS else 1000).eval()
        params = count_params(model)
        published = PUBLISHED.get(name)
        paper_params = published.params if published else None
        match = params_match(params, paper_params)
        flops = ""
        if args.flops:
            size = 32 if name in _SMALL_IMAGE_MODELS else 224
            flops = f"{count_flops(model, (1, 3, size, size)) / 1e9:.3f}"
        top1 = ""
        if published and (published.top1 or published.top1_advanced):
            top1 = f"{published.top1}" if published.top1 else f"{published.top1_advanced} (200e adv.)"
        rows.append(
            [
                name,
                f"{params:,}",
                _format_params(paper_params),
                {None: "", True: "yes", False: "NO"}[match],
                flops,
                top1,
            ]
        )
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    return 0
