"""attentive-norm: Attentive Normalization (Li, Sun, Wu, ECCV 2020, arXiv:1908.01259) for PyTorch."""

from .layers import (
    ATTENTION_HEADS,
    POOLINGS,
    AttentiveBatchNorm2d,
    AttentiveGroupNorm,
    convert_norm,
    convert_sync_norm,
    freeze_norm,
)

__version__ = "0.1.0"

__all__ = [
    "ATTENTION_HEADS",
    "POOLINGS",
    "AttentiveBatchNorm2d",
    "AttentiveGroupNorm",
    "__version__",
    "convert_norm",
    "convert_sync_norm",
    "freeze_norm",
]
