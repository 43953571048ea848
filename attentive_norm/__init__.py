"""attentive-norm: Attentive Normalization (Li, Sun, Wu, ECCV 2020, arXiv:1908.01259) for PyTorch."""

from .checkpoint import load_checkpoint, save_weights
from .layers import (
    ATTENTION_HEADS,
    NORM_LAYERS,
    POOLINGS,
    AttentiveBatchNorm2d,
    AttentiveGroupNorm,
    convert_norm,
    convert_sync_norm,
    freeze_norm,
    get_norm_layer,
)
from .models import create_model, list_models
from .models.timm_bridge import install as _install_timm_bridge

__version__ = "0.1.0"

__all__ = [
    "ATTENTION_HEADS",
    "NORM_LAYERS",
    "POOLINGS",
    "AttentiveBatchNorm2d",
    "AttentiveGroupNorm",
    "__version__",
    "convert_norm",
    "convert_sync_norm",
    "create_model",
    "freeze_norm",
    "get_norm_layer",
    "list_models",
    "load_checkpoint",
    "save_weights",
]

# timm users get ``timm.create_model("resnet50_an")``; cheap, and a no-op without timm.
_install_timm_bridge()
