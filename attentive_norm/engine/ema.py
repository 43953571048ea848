"""An exponential moving average of the weights: ``ema = decay * ema + (1 - decay) * weights``.

Floating-point parameters and buffers are averaged; integer buffers (``num_batches_tracked``) are
copied. The average lives on the model's device and is evaluated like the model itself.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """A frozen copy of ``model`` updated after each optimiser step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema, current in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema.is_floating_point():
                ema.lerp_(current.to(ema.dtype), 1.0 - self.decay)
            else:
                ema.copy_(current)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
