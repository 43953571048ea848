"""The paper's learning-rate schedule: per-iteration linear warm-up, then cosine annealing.

As in the authors' code, the LR of (0-based) step ``s`` uses ``s + 1`` completed iterations::

    s <  W:  peak * (s + 1) / W
    s >= W:  min + (peak - min) * (1 + cos(pi * (s + 1 - W) / (T - W))) / 2

with ``W`` warm-up steps and ``T`` total steps, so the last step runs at ``min``.
"""

from __future__ import annotations

import math

import torch


class WarmupCosine:
    """Sets the LR of every parameter group of ``optimizer`` for a given step."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        peak_lr: float,
        total_steps: int,
        warmup_steps: int,
        min_lr: float = 0.0,
    ) -> None:
        self.optimizer = optimizer
        self.peak_lr = peak_lr
        self.total_steps = total_steps
        self.warmup_steps = min(warmup_steps, total_steps)
        self.min_lr = min_lr
        self.last_step = -1

    def lr_at(self, step: int) -> float:
        done = step + 1
        if done <= self.warmup_steps:
            return self.peak_lr * done / self.warmup_steps
        progress = (done - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.min_lr + (self.peak_lr - self.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0))) / 2

    def set_step(self, step: int) -> float:
        """Set the LR for ``step`` and return it."""
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.last_step = step
        return lr

    def state_dict(self) -> dict[str, float]:
        return {key: value for key, value in vars(self).items() if key != "optimizer"}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Continue from a checkpoint's position. The shape (peak, warm-up, length, minimum) stays the
        one this schedule was built with, so ``--lr``, ``--epochs``, ... given on resume apply."""
        self.last_step = int(state["last_step"])
