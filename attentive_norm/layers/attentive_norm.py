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
from .fused import (
    batch_norm_statistics,
    fused_instance_affine,
    group_norm_statistics,
    instance_affine,
    instance_moments,
    pooled_descriptor,
)
from .native import native_eval_forward
from .stats import normalize_batch, register_running_stats, synced_normalize_batch

# Helpers that branch on shapes or switch autocast become single nodes under torch.fx.symbolic_trace.
torch.fx.wrap("normalize_batch")
torch.fx.wrap("full_precision_matmul")
torch.fx.wrap("instance_moments")
torch.fx.wrap("instance_affine")
torch.fx.wrap("pooled_descriptor")
torch.fx.wrap("batch_norm_statistics")
torch.fx.wrap("group_norm_statistics")

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

    @torch.jit.unused
    def _coefficients(
        self, x: Tensor, mean_hw: Tensor, var_hw: Tensor, mean: Tensor, rstd: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The fast path's N×C maths (fused.py): ``out = a * x + b`` per instance and channel, with the
        attention fed from the per-instance moments ``mean_hw``, ``var_hw`` and the standardisation's
        ``mean`` and ``rstd`` (per channel, or N×C) folded into ``a`` and ``b``."""
        head = self.attention
        descriptor = pooled_descriptor(x, mean_hw, var_hw, head.pooling, head.pooling_eps)
        lam = head(x, descriptor)
        a = full_precision_matmul(lam, self.mixture_weight) * rstd
        b = torch.addcmul(full_precision_matmul(lam, self.mixture_bias), mean, a, value=-1.0)
        return a, b

    @torch.jit.unused
    def _fused_forward(self, x: Tensor) -> Tensor:
        if torch.fx._symbolic_trace.is_fx_symbolic_tracing():
            # Symbolic tracing records the steps, each shape-dependent one a leaf of the graph.
            mean_hw, var_hw = instance_moments(x)
            mean, rstd = self._standardisation(x, mean_hw, var_hw)
            a, b = self._coefficients(x, mean_hw, var_hw, mean, rstd)
            return instance_affine(x, a, b)

        if not torch.is_grad_enabled():
            standardisation = self._inference_standardisation()
            if standardisation is not None:
                params = self._parameters  # direct reads: see native_eval_forward
                out = native_eval_forward(
                    x,
                    self._modules["attention"],
                    params["mixture_weight"],
                    params["mixture_bias"],
                    standardisation,
                )
                if out is not None:
                    return out

        def coefficients(mean_hw: Tensor, var_hw: Tensor) -> tuple[Tensor, Tensor]:
            mean, rstd = self._standardisation(x, mean_hw, var_hw)
            return self._coefficients(x, mean_hw, var_hw, mean, rstd)

        return fused_instance_affine(x, coefficients, self.parameters())

    def _standardisation(self, x: Tensor, mean_hw: Tensor, var_hw: Tensor) -> tuple[Tensor, Tensor]:
        """``mean`` and ``rstd`` of the standardisation from the per-instance moments."""
        raise NotImplementedError

    def _inference_standardisation(self) -> tuple[Tensor | None, Tensor | None, int, float] | None:
        """The standardisation as the native inference kernel takes it (``native_eval_forward``), or
        None while it depends on the batch (statistics being learned)."""
        raise NotImplementedError

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
        # local_metadata["version"] is our _version for dicts we wrote and absent for the authors'
        # (and for ours after the metadata was dropped, e.g. by dict(state_dict)). Their layout is
        # recognised by its key names instead, so it loads either way; ``copy_`` casts their fp16.
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

    Behaviour at the edges (documented choices, tested in tests/layers/test_edge_cases.py):
        - Batch size 1 in training: the standardisation uses the H×W values of the one instance (and
          updates the running statistics), as ``nn.BatchNorm2d`` does. The logit BatchNorm then sees one
          value per logit, which has no variance: it uses its running statistics and leaves them alone.
        - At most one value per channel in training (batch 1 of a 1×1 map, or an empty batch, as
          detection heads can get): the layer standardises with its running statistics and leaves them
          unchanged, so the output equals the eval-mode output instead of an error.
        - ``track_running_stats=False``: batch statistics in training and eval (as ``nn.BatchNorm2d``);
          a single value then standardises to 0 and a single instance gets the logit BatchNorm's bias.
        - ``momentum=None``: cumulative average of the batch statistics (as ``nn.BatchNorm2d``).
        - The pooling's unbiased variance over a 1×1 map is taken as 0 (the authors' code gives NaN).
        - Constant input in training: zero batch variance, standardised to 0 (up to rounding), so the
          output is the attention-weighted mixture bias; in eval the running statistics apply as usual.
        - Magnitudes: statistics are computed in float32 (or float64) even for half-precision input;
          for large inputs (``|x| >> 1``) the layer is scale invariant, for tiny ones (variance below
          ``eps``) the eps terms dominate, as in BatchNorm. Output and gradients stay finite.
        - Mixture weights are not normalised to sum to one (as published).
        - ``freeze_statistics()`` ("norm_eval"): running statistics are used and not updated, while
          the mixture and attention keep learning. See ``convert.freeze_norm``.

    Speed: inference on the CPU (no gradient recorded, running statistics) runs the native kernel of
    ``native.py``, one call per layer; eager training, and inference elsewhere, take the fused path of
    ``fused.py`` (the statistics in one reading pass, the output as one per-instance affine pass, one
    autograd node whose backward saves only the input, as BatchNorm's does); gradients on that path
    are first order (no double backward). TorchScript and layers with a ``process_group`` take the
    composite route (standardise, then mix).

    Works with ``torch.compile(fullgraph=True)``, TorchScript, ONNX export (eval), channels_last and
    autocast (statistics, attention and mixture in float32; output in the input's dtype). Under
    ``torch.fx.symbolic_trace`` the shape-dependent helpers become single nodes; as for any non-leaf
    module the traced graph fixes train/eval mode at trace time. A layer whose ``process_group`` is
    set (SyncBatchNorm) cannot be scripted.
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
        register_running_stats(self, num_features, track_running_stats, **factory)
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
        if torch.jit.is_scripting() or self.process_group is not None:
            # TorchScript cannot run custom autograd functions; SyncBatchNorm needs the gathered moments.
            return self._mix(x, self._standardise(x))
        return self._fused_forward(x)

    @torch.jit.unused
    def _standardisation(self, x: Tensor, mean_hw: Tensor, var_hw: Tensor) -> tuple[Tensor, Tensor]:
        return batch_norm_statistics(
            x,
            mean_hw,
            var_hw,
            self.running_mean,
            self.running_var,
            self.num_batches_tracked,
            self.training and not self.freeze_stats,
            self.momentum,
            self.eps,
        )

    @torch.jit.unused
    def _inference_standardisation(self) -> tuple[Tensor | None, Tensor | None, int, float] | None:
        buffers = self._buffers
        if (self.training and not self.freeze_stats) or buffers["running_mean"] is None:
            return None
        return buffers["running_mean"], buffers["running_var"], 0, self.eps

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
    the same in training and eval, for any batch size (including 1 and empty batches). A group holding
    a single value (one channel per group on a 1×1 map) standardises to 0.
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
        check_positive_int("num_groups", num_groups)
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
        if torch.jit.is_scripting():
            # torch.group_norm, not F.group_norm: the latter refuses a batch of one whose groups hold one
            # value each, which standardises to 0 like any zero-variance group.
            return self._mix(x, torch.group_norm(x, self.num_groups, None, None, self.eps))
        return self._fused_forward(x)

    @torch.jit.unused
    def _standardisation(self, x: Tensor, mean_hw: Tensor, var_hw: Tensor) -> tuple[Tensor, Tensor]:
        return group_norm_statistics(x, mean_hw, var_hw, self.num_groups, self.eps)

    @torch.jit.unused
    def _inference_standardisation(self) -> tuple[Tensor | None, Tensor | None, int, float] | None:
        return None, None, self.num_groups, self.eps

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
