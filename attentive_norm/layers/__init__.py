"""Normalization layers: Attentive Normalization, its attention heads, factories and converters."""

from .attention import ATTENTION_HEADS, POOLINGS, AttentionHead, LogitNorm
from .attentive_norm import AttentiveBatchNorm2d, AttentiveGroupNorm
from .convert import convert_norm, convert_sync_norm, freeze_norm, matching_norms
from .factory import NORM_LAYERS, ChannelFirstGroupNorm, get_norm_layer
from .frozen_stats import FrozenStatsBatchNorm2d

__all__ = [
    "ATTENTION_HEADS",
    "NORM_LAYERS",
    "POOLINGS",
    "AttentionHead",
    "AttentiveBatchNorm2d",
    "AttentiveGroupNorm",
    "ChannelFirstGroupNorm",
    "FrozenStatsBatchNorm2d",
    "LogitNorm",
    "convert_norm",
    "convert_sync_norm",
    "freeze_norm",
    "get_norm_layer",
    "matching_norms",
]
