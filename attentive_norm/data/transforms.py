"""Image transforms: the paper's ImageNet pipeline and the digits demo's.

ImageNet (the paper): RandomResizedCrop(224) + horizontal flip for training, nothing
else; Resize(256) + CenterCrop(224) for evaluation; the usual ImageNet mean/std normalisation.
Digits: a random translation (pad by 1/8 of the size and crop back); no flip, which would turn
some digits into others.
"""

from __future__ import annotations

from collections.abc import Callable

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIGITS_MEAN = (0.31, 0.31, 0.31)
DIGITS_STD = (0.32, 0.32, 0.32)
"""Mean and std of the upsampled digits' pixels (training split at 32×32, rounded)."""

_MODES = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}

Transform = Callable[[object], object]


def imagenet_train(size: int = 224, interpolation: str = "bilinear") -> Transform:
    return T.Compose(
        [
            T.RandomResizedCrop(size, interpolation=_MODES[interpolation]),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def imagenet_eval(size: int = 224, resize: int | None = 256, interpolation: str = "bilinear") -> Transform:
    return T.Compose(
        [
            T.Resize(resize or size, interpolation=_MODES[interpolation]),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def digits_train(size: int) -> Transform:
    return T.Compose([T.RandomCrop(size, padding=max(1, size // 8)), T.Normalize(DIGITS_MEAN, DIGITS_STD)])


def digits_eval() -> Transform:
    return T.Normalize(DIGITS_MEAN, DIGITS_STD)
