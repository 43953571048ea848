"""Image files decoded to 8-bit RGB, whatever their mode.

PIL's ``convert("RGB")`` handles grey (``L``, ``1``), palette (``P``, also with transparency), ``CMYK``,
``YCbCr``, ``LAB``, ``HSV`` and alpha (``LA``, ``RGBA``, ``PA``: the alpha is dropped, as torchvision's
loader does), but it clips high-bit-depth grey to 255, which turns a 16-bit PNG (``I;16``) white. Those
(``I;16*`` and ``I``, taken as 16-bit values) are rescaled to 8 bits first. A truncated or corrupt file
raises here, since the image is decoded completely; callers skip and count it.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

_SIXTEEN_BIT = 65535 / 255


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """The image at ``path``, decoded, as 8-bit RGB."""
    with Image.open(path) as image:
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB; 16-bit grey is rescaled, not clipped."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64) / _SIXTEEN_BIT
        image = Image.fromarray(np.clip(values.round(), 0, 255).astype(np.uint8))
    return image.convert("RGB")
