"""The run's console table and ``summary.csv``: one row per epoch."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

COLUMNS: tuple[tuple[str, str, str], ...] = (
    # key, header, format
    ("epoch", "epoch", "{:>5d}"),
    ("train_loss", "train loss", "{:>10.4f}"),
    ("val_loss", "val loss", "{:>8.4f}"),
    ("val_top1", "top-1", "{:>6.2f}"),
    ("val_top5", "top-5", "{:>6.2f}"),
    ("ema_top1", "EMA top-1", "{:>9.2f}"),
    ("lr", "lr", "{:>9.3g}"),
    ("images_per_s", "img/s", "{:>7.0f}"),
    ("epoch_time_s", "time", "{:>6.1f}"),
)


def _columns(row: dict) -> list[tuple[str, str, str]]:
    return [c for c in COLUMNS if c[0] in row]


def table_header(row: dict) -> str:
    columns = _columns(row)
    widths = [len(fmt.format(0 if "d" in fmt else 0.0)) for _, _, fmt in columns]
    return "  ".join(header.rjust(w) for (_, header, _), w in zip(columns, widths))


def table_row(row: dict) -> str:
    return "  ".join(fmt.format(row[key]) for key, _, fmt in _columns(row))


def write_csv(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """All rows, with the union of their keys as the header (in first-seen order)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
