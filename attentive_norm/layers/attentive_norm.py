"""Attentive Normalization layers (Li, Sun, Wu, "Attentive Normalization", ECCV 2020, arXiv:1908.01259).

An AN layer standardises its input like BatchNorm (or GroupNorm) without an affine transform, then
applies a per-instance affine transform that is a mixture of K learned affine transforms::

    xhat = standardise(x)                                     # BN or GN, affine=False
    lam  = attention(x)                                       # N×K, see attention.py
    out  = (lam @ mixture_weight)[..., None, None] * xhat + (lam @ mixture_bias)[..., None, None]

These layers are *not* subclasses of ``nn.BatchNorm2d``/``nn.GroupNorm``: converters that look for
those classes (PyTorch's and timm's SyncBN converters, timm's and detectron2's frozen-BN converters)
would rebuild them as plain norms and silently drop the attention and the mixture. Use this package's
``convert_sync_norm`` and ``freeze_norm``, which handle both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import AttentionHead, check_positive_int, full_precision_matmul
from .stats import normalize_batch, synced_normalize_batch

# Helpers that branch on shapes or switch autocast become single nodes under torch.fx.symbolic_trace.
torch.fx.wrap("normalize_batch")
torch.fx.wrap("full_precision_matmul")

_OFFICIAL_RENAMES: tuple[tuple[str, str], ...] = (
    ("weight_", "mixture_weight"),
    ("bias_", "mixture_bias"),
    ("attention_weights.attention.0.weight", "attention.weight"),
    ("attention_weights.attention.0.bias", "attention.bias"),
    ("attention_weights.attention.1.weight", "attention.norm.weight"),
    ("attention_weights.attention.1.bias", "attention.norm.bias"),
    ("attention_weights.attention.1.running_mean", "attention.norm.running_mean"),
    ("attention_weights.attention.1.running_var", "attention.norm.running_var"),
    ("attention_weights.attention.1.num_batches_tracked", "attention.norm.num_batches_tracked"),
)
"""The authors' key names (suffixes under an AN layer) and ours. Their attention conv is K×C×1×1."""


class _AttentiveNorm(nn.Module):
    """What both AN layers share: the K×C mixture, the attention head, input checks, key migration."""

    # Version of this layer's state layout, stored in the state-dict metadata. Bump it when the layout
    # changes and teach ``_load_from_state_dict`` to migrate the older versions.
    _version = 1

    def __init__(
        self,
        num_channels: int,
        num_mixtures: int,
        *,
        attention: str,
        pooling: str,
        pooling_eps: float,
        track_running_stats: bool,
        attention_momentum: float | None,
        device: torch.device | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__()
        check_positive_int("num_channels", num_channels)
        check_positive_int("num_mixtures", num_mixtures)
        factory = {"device": device, "dtype": dtype}
        self.num_mixtures = num_mixtures
        # Construct the attention projection before drawing the mixture, as the authors do, so the
        # random streams line up with theirs under the same seed.
        self.attention = AttentionHead(
            num_channels,
            num_mixtures,
            head=attention,
            pooling=pooling,
            pooling_eps=pooling_eps,
            norm_momentum=attention_momentum,
            track_running_stats=track_running_stats,
            **factory,
        )
        self.mixture_weight = nn.Parameter(torch.empty(num_mixtures, num_channels, **factory))
        self.mixture_bias = nn.Parameter(torch.empty(num_mixtures, num_channels, **factory))
        self.reset_mixture()

    def reset_mixture(self) -> None:
        """The paper's init: mixture weight ~ N(1, 0.1), mixture bias ~ N(0, 0.1)."""
        nn.init.normal_(self.mixture_weight, 1.0, 0.1)
        nn.init.normal_(self.mixture_bias, 0.0, 0.1)

    def _mix(self, x: Tensor, xhat: Tensor) -> Tensor:
        """Per-instance affine: the attention-weighted mixture of the K affine transforms, computed in
        float32 or wider; the output has the input's dtype and memory format."""
        lam = self.attention(x)
        gamma = full_precision_matmul(lam, self.mixture_weight)
        beta = full_precision_matmul(lam, self.mixture_bias)
        out = torch.addcmul(beta[:, :, None, None], xhat, gamma[:, :, None, None])
        return out.to(x.dtype)

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        # The authors' layout (ECCV 2020 code): rename in place so their checkpoints load unchanged.
        for theirs, ours in _OFFICIAL_RENAMES:
            key = prefix + theirs
            if key in state_dict and prefix + ours not in state_dict:
                value = state_dict.pop(key)
                if ours == "attention.weight" and value.dim() == 4:
                    value = value.flatten(1)
                state_dict[prefix + ours] = value
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class AttentiveBatchNorm2d(_AttentiveNorm):
    """BatchNorm-based Attentive Normalization (arXiv:1908.01259), a drop-in for ``nn.BatchNorm2d``.

    Args:
        num_features: channels C of the N×C×H×W input.
        num_mixtures: K, the number of affine transforms mixed per instance (paper: 10 or 20).
        eps, momentum, track_running_stats: as in ``nn.BatchNorm2d`` for the standardisation.
        attention: the attention head (``attention.ATTENTION_HEADS``); default the paper's.
        pooling: ``"mean_rsqrt_var"`` (paper) or ``"mean"``.
        pooling_eps: the 1e-3 inside ``rsqrt(var + eps)`` of the pooling.
        attention_momentum: momentum of the logit BatchNorm's running statistics.

    Behaviour at the edges (documented choices):
        - In training, a channel with a single value in the batch (batch 1 of a 1×1 map) has no batch
          variance; the layer then standardises with its running statistics and leaves them unchanged.
          The logit BatchNorm does the same for batch size 1. Without running statistics the
          standardised value is 0 (what the formula gives for zero variance).
        - The pooling's unbiased variance over a 1×1 map is taken as 0 (the authors' code gives NaN).
        - Mixture weights are not normalised to sum to one (as published).
        - ``freeze_statistics()`` ("norm_eval"): running statistics are used and not updated, while
          the mixture and attention keep learning. See ``convert.freeze_norm``.
    """

    def __init__(
        self,
        num_features: int,
        num_mixtures: int = 10,
        *,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        track_running_stats: bool = True,
        attention: str = "conv_bn_hsigmoid",
        pooling: str = "mean_rsqrt_var",
        pooling_eps: float = 1e-3,
        attention_momentum: float | None = 0.1,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features,
            num_mixtures,
            attention=attention,
            pooling=pooling,
            pooling_eps=pooling_eps,
            track_running_stats=track_running_stats,
            attention_momentum=attention_momentum,
            device=device,
            dtype=dtype,
        )
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.track_running_stats = track_running_stats
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.freeze_stats = False
        self.process_group: object | None = None

    def reset_running_stats(self) -> None:
        """Reset both the main and the logit running statistics."""
        if self.running_mean is not None:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()
        if self.attention.norm is not None:
            self.attention.norm.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.num_features, "AttentiveBatchNorm2d")
        return self._mix(x, self._standardise(x))

    def freeze_statistics(self, frozen: bool = True) -> None:
        """ "norm_eval": standardise with the running statistics and stop updating them (main and logit
        BatchNorm alike), while the mixture and attention parameters keep training."""
        self.freeze_stats = frozen
        if self.attention.norm is not None:
            self.attention.norm.freeze_stats = frozen

    def _standardise(self, x: Tensor) -> Tensor:
        """``(x - mean) * rsqrt(var + eps)``: batch statistics in training, running ones in eval."""
        learning = self.training and not self.freeze_stats
        if not learning and self.running_mean is not None:
            return F.batch_norm(x, self.running_mean, self.running_var, None, None, False, 0.0, self.eps)
        if self.process_group is not None:
            return synced_normalize_batch(
                x,
                self.running_mean,
                self.running_var,
                self.num_batches_tracked,
                learning,
                self.momentum,
                self.eps,
                self.process_group,
            )
        return normalize_batch(
            x,
            self.running_mean,
            self.running_var,
            self.num_batches_tracked,
            learning,
            self.momentum,
            self.eps,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_mixtures={self.num_mixtures}, eps={self.eps}, "
            f"momentum={self.momentum}, track_running_stats={self.track_running_stats}"
        )


class AttentiveGroupNorm(_AttentiveNorm):
    """GroupNorm-based Attentive Normalization (the "AN (w/ GN)" detection heads of arXiv:1908.01259).

    Standardisation is ``GroupNorm(num_groups, affine=False)``; the attention head is a 1×1 conv with
    bias and a hard sigmoid, with no norm inside, so the layer keeps no running statistics and behaves
    the same in training and eval.
    """

    def __init__(
        self,
        num_channels: int,
        num_groups: int = 32,
        num_mixtures: int = 10,
        *,
        eps: float = 1e-5,
        attention: str = "conv_bias_hsigmoid",
        pooling: str = "mean_rsqrt_var",
        pooling_eps: float = 1e-3,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
        if isinstance(num_channels, int) and num_channels % num_groups != 0:
            raise ValueError(
                f"num_groups={num_groups} must divide num_channels={num_channels} "
                f"(e.g. use num_groups in {_divisors(num_channels)})"
            )
        super().__init__(
            num_channels,
            num_mixtures,
            attention=attention,
            pooling=pooling,
            pooling_eps=pooling_eps,
            track_running_stats=True,
            attention_momentum=0.1,
            device=device,
            dtype=dtype,
        )
        self.num_channels = num_channels
        self.num_groups = num_groups
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.num_channels, "AttentiveGroupNorm")
        return self._mix(x, F.group_norm(x, self.num_groups, None, None, self.eps))

    def extra_repr(self) -> str:
        return (
            f"{self.num_channels}, num_groups={self.num_groups}, "
            f"num_mixtures={self.num_mixtures}, eps={self.eps}"
        )


@torch.fx.wrap
def check_input(x: Tensor, num_channels: int, layer_name: str) -> None:
    """Raise a ValueError unless ``x`` is N×C×H×W with C == ``num_channels``. (An FX leaf: it branches
    on the shape.)"""
    if x.dim() != 4:
        raise ValueError(
            f"{layer_name} expects a 4D input (N, C, H, W), got a {x.dim()}D input of shape {list(x.shape)}"
        )
    if x.shape[1] != num_channels:
        raise ValueError(
            f"{layer_name} was built for {num_channels} channels, got an input with {x.shape[1]} channels "
            f"(shape {list(x.shape)})"
        )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
