"""A tiny model with one AN layer, for the checkpoint tests that need no zoo network."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from attentive_norm.checkpoint.testing import randomize_state
from attentive_norm.layers import AttentiveBatchNorm2d


class TinyNet(nn.Module):
    """conv-BN-ReLU, conv-AN-ReLU, pool, linear: every kind of tensor the loader must handle."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = AttentiveBatchNorm2d(8, 4)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def make_tiny() -> type[TinyNet]:
    return TinyNet


@pytest.fixture
def tiny() -> TinyNet:
    model = TinyNet()
    randomize_state(model, seed=1)
    return model.eval()
