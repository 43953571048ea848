"""Normalization layers: Attentive Normalization, its attention heads, factories and converters."""

from .attention import ATTENTION_HEADS, POOLINGS, AttentionHead, LogitNorm
from .attentive_norm import AttentiveBatchNorm2d, AttentiveGroupNorm

__all__ = [
    "ATTENTION_HEADS",
    "POOLINGS",
    "AttentionHead",
    "AttentiveBatchNorm2d",
    "AttentiveGroupNorm",
    "LogitNorm",
]
