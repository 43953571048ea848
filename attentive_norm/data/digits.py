"""The bundled demo data: scikit-learn's 1,797 handwritten digits (8×8, 10 classes), upsampled.

The images ship inside scikit-learn, so nothing is downloaded. They are split once (80/20, stratified,
a fixed seed independent of the run's seed, so every run and every model sees the same split),
scaled to [0, 1], upsampled bilinearly to ``image_size`` and repeated to three channels so that every
model of the zoo accepts them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

VAL_FRACTION = 0.2
SPLIT_SEED = 0


class TensorImages(Dataset):
    """Images held in memory as an N×1×H×W tensor in [0, 1]; items are (3×H×W image, label)."""

    def __init__(self, images: Tensor, labels: Tensor, classes: list[str]) -> None:
        self.images = images
        self.labels = labels
        self.classes = classes

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> tuple[Tensor, int]:
        return self.images[index].expand(3, -1, -1), int(self.labels[index])

    def describe(self, index: int) -> str:
        return f"digit #{index}"


def digits_datasets(image_size: int) -> tuple[TensorImages, TensorImages]:
    """The training and validation splits of the digits, upsampled to ``image_size``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.clamp_(0.0, 1.0)
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    train_idx, val_idx = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=VAL_FRACTION,
        stratify=labels.numpy(),
        random_state=SPLIT_SEED,
    )
    classes = [str(c) for c in digits.target_names]
    train_idx, val_idx = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
    return (
        TensorImages(images[train_idx], labels[train_idx], classes),
        TensorImages(images[val_idx], labels[val_idx], classes),
    )
