"""Mixup (Zhang et al., ICLR 2018) as in the paper's advanced recipe: one lambda per batch.

``x' = lam * x + (1 - lam) * x[perm]``; the loss is ``lam * CE(out, y) + (1 - lam) * CE(out, y[perm])``
(with label smoothing inside each term), exactly the authors' formulation. The randomness comes from
an explicit ``seed`` (the trainer passes one per step and process), so a resumed run mixes the same
pairs with the same lambdas.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import Tensor


def mixup(x: Tensor, y: Tensor, alpha: float, seed: int) -> tuple[Tensor, Tensor, float]:
    """The mixed batch, the partner labels ``y[perm]`` and ``lam ~ Beta(alpha, alpha)``."""
    lam = random.Random(seed).betavariate(alpha, alpha)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed)).to(x.device)
    return x.mul(lam).add_(x[perm], alpha=1.0 - lam), y[perm], lam


def mixup_loss(
    logits: Tensor, y: Tensor, y_partner: Tensor, lam: float, label_smoothing: float = 0.0
) -> Tensor:
    """``lam * CE(logits, y) + (1 - lam) * CE(logits, y_partner)``."""
    ce = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    return lam * ce + (1.0 - lam) * F.cross_entropy(logits, y_partner, label_smoothing=label_smoothing)
