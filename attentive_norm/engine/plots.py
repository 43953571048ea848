"""PNG figures of a run: training curves, class-mean attention weights, and model comparisons."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from torch import Tensor


def plot_curves(history: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """Loss, top-1 and learning rate per epoch."""
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    axes[0].plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    axes[0].set_ylabel("loss")
    axes[0].set_yscale("log")
    axes[1].plot(epochs, [r["train_top1"] for r in history], "o-", label="train")
    axes[1].plot(epochs, [r["val_top1"] for r in history], "o-", label="val top-1")
    axes[1].plot(epochs, [r["val_top5"] for r in history], "o--", label="val top-5")
    if "ema_top1" in history[0]:
        axes[1].plot(epochs, [r["ema_top1"] for r in history], "o-", label="EMA top-1")
    axes[1].set_ylabel("accuracy (%)")
    axes[2].plot(epochs, [r["lr"] for r in history], "o-")
    axes[2].set_ylabel("learning rate (epoch end)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_attention(weights: Tensor, classes: Sequence[str], layer: str, path: str | os.PathLike) -> None:
    """Heat map of the classes × K mean mixture weights of one AN layer."""
    num_classes, k = weights.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * k, 1.2 + 0.3 * min(num_classes, 60)))
    image = ax.imshow(weights.numpy(), aspect="auto", cmap="viridis")
    ax.set_xlabel("mixture component k")
    ax.set_ylabel("class")
    ax.set_xticks(range(k))
    if num_classes <= 60:
        ax.set_yticks(range(num_classes), [str(c) for c in classes])
    ax.set_title(f"mean attention weights per class\n{layer}", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_comparison(
    results: dict[str, list[float]], path: str | os.PathLike, metric: str = "top-1 (%)"
) -> None:
    """One column per model: every seed's value, and the mean ± standard deviation."""
    names = list(results)
    fig, ax = plt.subplots(figsize=(1.5 + 1.3 * len(names), 3.8))
    for i, name in enumerate(names):
        values = results[name]
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5
        ax.errorbar([i], [mean], yerr=[std], fmt="s", color="black", capsize=6, zorder=3)
        ax.scatter([i + 0.12] * len(values), values, alpha=0.7, zorder=2)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(metric)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("mean ± std over seeds (dots: single runs)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
