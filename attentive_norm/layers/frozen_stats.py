"""BatchNorm with frozen statistics and a trainable affine ("norm_eval"), for fine-tuning detectors.

Detection fine-tuning keeps a pretrained backbone's BatchNorm statistics fixed (small per-GPU batches
would give poor estimates) while its affine parameters still learn. ``model.eval()`` on the norms does
that only until the next ``model.train()``; this layer does it for good.

Deliberately *not* an ``nn.BatchNorm2d`` subclass: SyncBN converters (PyTorch's, timm's) would
otherwise turn it back into a synchronised, statistics-updating BatchNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .stats import register_running_stats


class FrozenStatsBatchNorm2d(nn.Module):
    """``nn.BatchNorm2d`` that always normalises with its running statistics and never updates them.

    ``weight`` and ``bias`` are ordinary parameters (trainable unless switched off); the state-dict keys
    are those of ``nn.BatchNorm2d`` (``num_batches_tracked`` included), so checkpoints load either way.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features, **factory))
        self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        register_running_stats(self, num_features, **factory)

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d) -> FrozenStatsBatchNorm2d:
        """``bn`` with frozen statistics: its statistics, affine, ``requires_grad``, device, dtype, mode.

        A non-affine ``bn`` gets weight 1 and bias 0, not trainable, so the function is unchanged.
        """
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(f"{type(bn).__name__} has no running statistics to freeze")
        frozen = cls(
            bn.num_features, bn.eps, device=bn.running_mean.device, dtype=bn.running_mean.dtype
        ).train(bn.training)
        with torch.no_grad():
            frozen.running_mean.copy_(bn.running_mean)
            frozen.running_var.copy_(bn.running_var)
            if bn.num_batches_tracked is not None:
                frozen.num_batches_tracked.copy_(bn.num_batches_tracked)
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
        frozen.weight.requires_grad_(bn.affine and bn.weight.requires_grad)
        frozen.bias.requires_grad_(bn.affine and bn.bias.requires_grad)
        return frozen

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected 4D input (got {x.dim()}D input)")
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
