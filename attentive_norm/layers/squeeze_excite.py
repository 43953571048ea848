"""Squeeze-and-Excitation (Hu et al., CVPR 2018), the channel attention AN is compared against.

``x * sigmoid(W2 relu(W1 mean_hw(x)))`` with ``W1``: C -> C/r and ``W2``: C/r -> C, both without bias.
Bias-free projections are what reproduce the AN paper's SE-ResNet-50 parameter counts (26.186M,
28.072M, 29.329M); with biases they would be 26.190M, 28.088M, 29.355M.
"""

from __future__ import annotations

from torch import Tensor, nn


class SqueezeExcite(nn.Module):
    """Rescales each channel by a gate computed from the globally pooled input (no biases)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc2(self.fc1(x.mean((2, 3))).relu()).sigmoid()
        return x * gate[:, :, None, None]
