"""Attention heads of Attentive Normalization: per-instance weights over the K mixture components.

A head maps the input feature map (N×C×H×W) to N×K weights ``lam``. The paper's head pools each
channel to ``mean * rsqrt(var + 1e-3)``, projects C -> K with a 1×1 conv (a linear map), normalises the
K logits with a BatchNorm and applies a hard sigmoid. The paper's other heads are selected by name.

The logit BatchNorm is :class:`LogitNorm`, deliberately *not* an ``nn.BatchNorm`` subclass: PyTorch's,
timm's and torchvision's SyncBN/frozen-BN converters walk every child, and must not rewrite a piece
of an AN layer behind its back. Distributed synchronisation and freezing are handled by this package's
own converters, which know about the whole layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .stats import normalize_batch, register_running_stats, statistics_dtype, synced_normalize_batch

# Shape-dependent helpers become single nodes under torch.fx.symbolic_trace (see stats.py).
torch.fx.wrap("normalize_batch")

POOLINGS: tuple[str, ...] = ("mean_rsqrt_var", "mean")
"""``mean_rsqrt_var``: the paper's ``mean_hw(x) * rsqrt(var_hw(x) + eps)``; ``mean``: plain spatial mean."""

ATTENTION_HEADS: tuple[str, ...] = (
    "conv_bn_hsigmoid",
    "conv_bn_sigmoid",
    "conv_bn_softmax",
    "conv_bias_sigmoid",
    "conv_bias_hsigmoid",
    "mlp_hsigmoid",
)
"""Readable names of the paper's attention heads (the authors number them; we name them).

- ``conv_bn_hsigmoid``: conv 1×1 (no bias) -> BatchNorm over K -> hard sigmoid. The paper's default.
- ``conv_bn_sigmoid``: conv 1×1 (no bias) -> BatchNorm over K -> sigmoid.
- ``conv_bn_softmax``: conv 1×1 (no bias) -> BatchNorm over K -> softmax over K (weights sum to one).
- ``conv_bias_sigmoid``: conv 1×1 with bias -> sigmoid.
- ``conv_bias_hsigmoid``: conv 1×1 with bias -> hard sigmoid. The GroupNorm-based AN's default.
- ``mlp_hsigmoid``: Linear C->2K with bias -> ReLU -> Linear 2K->K with bias -> hard sigmoid.
"""


@torch.fx.wrap
def spatial_descriptor(x: Tensor, pooling: str = "mean_rsqrt_var", eps: float = 1e-3) -> Tensor:
    """Pool each channel of ``x`` (N×C×H×W) to one number per instance, in float32 or wider.

    ``mean_rsqrt_var`` uses the unbiased spatial variance, as the paper does. On a 1×1 map that
    variance is 0/0; we define it as 0 (a single value has no spread), so the descriptor is
    ``x * rsqrt(eps)`` instead of the authors' NaN. (An FX leaf: it branches on the map size.)
    """
    if pooling != "mean_rsqrt_var" and pooling != "mean":
        raise ValueError(f"unknown pooling '{pooling}'; expected 'mean_rsqrt_var' or 'mean'")
    x = x.to(statistics_dtype(x))
    if x.shape[0] == 0:  # an empty batch (detection heads get them): no variance to warn about
        return x.sum(dim=[2, 3])
    if pooling == "mean":
        return x.mean(dim=[2, 3])
    num_pixels = x.shape[2] * x.shape[3]
    var, mean = torch.var_mean(x, dim=[2, 3], correction=0)
    var = var * (num_pixels / max(num_pixels - 1, 1))
    return mean * torch.rsqrt(var + eps)


@torch.fx.wrap
def full_precision_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` in ``a``'s dtype (float32 or wider here), also under autocast, which would otherwise
    run it in half precision. (An FX leaf, so that traced graphs keep the autocast switch.)"""
    b = b.to(a.dtype)
    if torch.jit.is_scripting():
        return a @ b  # TorchScript cannot switch autocast off for a run-time device type.
    if not torch.is_autocast_enabled(a.device.type):
        return a @ b
    with torch.autocast(a.device.type, enabled=False):
        return a @ b


@torch.fx.wrap
def full_precision_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` (one ``F.linear``) in ``x``'s dtype (float32 or wider here), also under
    autocast. (An FX leaf, as :func:`full_precision_matmul`.)"""
    weight = weight.to(x.dtype)
    bias = None if bias is None else bias.to(x.dtype)
    if torch.jit.is_scripting():
        return F.linear(x, weight, bias)
    if not torch.is_autocast_enabled(x.device.type):
        return F.linear(x, weight, bias)
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x, weight, bias)


@torch.fx.wrap
def hard_sigmoid(z: Tensor) -> Tensor:
    """``relu6(z + 3) / 6``, the paper's gate: PyTorch's ``hardsigmoid`` (the same values in one op) where
    no gradient is recorded; otherwise the composed form, because ``hardsigmoid``'s backward multiplies
    by a float32 1/6 (off by 3e-8 relative in float64). (An FX leaf: it branches on autograd state.)"""
    if torch.is_grad_enabled() and z.requires_grad:
        return F.relu6(z + 3.0) / 6.0
    return F.hardsigmoid(z)


def check_positive_int(name: str, value: object) -> None:
    """Raise a ValueError unless ``value`` is an int >= 1 (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


class LogitNorm(nn.Module):
    """BatchNorm over the K attention logits (input N×K), with the usual running statistics.

    In training with a single instance there is no batch variance; the layer then uses (and does not
    update) its running statistics, so batch-size-1 training gives finite, input-dependent weights.
    """

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        track_running_stats: bool = True,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.track_running_stats = track_running_stats
        self.weight = nn.Parameter(torch.ones(num_features, **factory))
        self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        register_running_stats(self, num_features, track_running_stats, **factory)
        self.freeze_stats = False
        self.process_group: object | None = None

    def reset_parameters(self) -> None:
        """Weight 1, bias 0, running statistics reset."""
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        if self.running_mean is not None:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    def forward(self, z: Tensor) -> Tensor:
        # The logits arrive in float32 (full-precision projection); a module cast with .half() or
        # .bfloat16() keeps its statistics in that dtype, which the batch-norm kernels require of z too.
        z = z.to(self.weight.dtype)
        learning = self.training and not self.freeze_stats
        if not learning and self.running_mean is not None:
            return F.batch_norm(
                z, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        if self.process_group is not None:
            zhat = synced_normalize_batch(
                z,
                self.running_mean,
                self.running_var,
                self.num_batches_tracked,
                learning,
                self.momentum,
                self.eps,
                self.process_group,
            )
        else:
            zhat = normalize_batch(
                z,
                self.running_mean,
                self.running_var,
                self.num_batches_tracked,
                learning,
                self.momentum,
                self.eps,
            )
        return torch.addcmul(self.bias, zhat, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class AttentionHead(nn.Module):
    """Computes the N×K mixture weights of an AN layer from its raw input.

    Parameters: ``weight`` (K×C, the 1×1 conv), ``bias`` (K, heads with bias), ``norm``
    (:class:`LogitNorm`, heads with a BatchNorm) and, for ``mlp_hsigmoid``, ``hidden_weight`` (2K×C)
    and ``hidden_bias`` (2K). Everything is computed in float32 (or float64) even under autocast.
    """

    def __init__(
        self,
        num_channels: int,
        num_mixtures: int,
        *,
        head: str = "conv_bn_hsigmoid",
        pooling: str = "mean_rsqrt_var",
        pooling_eps: float = 1e-3,
        norm_eps: float = 1e-5,
        norm_momentum: float | None = 0.1,
        track_running_stats: bool = True,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("num_channels", num_channels)
        check_positive_int("num_mixtures", num_mixtures)
        if head not in ATTENTION_HEADS:
            raise ValueError(f"unknown attention head {head!r}; expected one of {', '.join(ATTENTION_HEADS)}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
        factory = {"device": device, "dtype": dtype}
        self.head = head
        self.pooling = pooling
        self.pooling_eps = pooling_eps
        in_features = num_channels
        if head == "mlp_hsigmoid":
            self.hidden_weight = nn.Parameter(torch.empty(2 * num_mixtures, num_channels, **factory))
            self.hidden_bias = nn.Parameter(torch.empty(2 * num_mixtures, **factory))
            in_features = 2 * num_mixtures
        else:
            self.register_parameter("hidden_weight", None)
            self.register_parameter("hidden_bias", None)
        self.weight = nn.Parameter(torch.empty(num_mixtures, in_features, **factory))
        if head.startswith("conv_bias") or head == "mlp_hsigmoid":
            self.bias = nn.Parameter(torch.empty(num_mixtures, **factory))
        else:
            self.register_parameter("bias", None)
        if "_bn_" in head:
            self.norm = LogitNorm(
                num_mixtures,
                eps=norm_eps,
                momentum=norm_momentum,
                track_running_stats=track_running_stats,
                **factory,
            )
        else:
            self.norm = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_out, relu) projection as in the paper; PyTorch's default for biases."""
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.weight.shape[1])
            nn.init.uniform_(self.bias, -bound, bound)
        if self.hidden_weight is not None:
            nn.init.kaiming_normal_(self.hidden_weight, mode="fan_out", nonlinearity="relu")
            bound = 1.0 / math.sqrt(self.hidden_weight.shape[1])
            nn.init.uniform_(self.hidden_bias, -bound, bound)
        if self.norm is not None:
            self.norm.reset_parameters()

    def forward(self, x: Tensor, descriptor: Tensor | None = None) -> Tensor:
        """N×K weights for the N×C×H×W input ``x``. ``descriptor``: its N×C pooled descriptor if the
        caller already has it (the AN layers' fast path computes it from moments it needs anyway);
        passing it through here keeps forward hooks on the head working."""
        if descriptor is None:
            descriptor = spatial_descriptor(x, self.pooling, self.pooling_eps)
        return self.weights_from_descriptor(descriptor)

    def weights_from_descriptor(self, s: Tensor) -> Tensor:
        """N×C descriptor -> N×K mixture weights, in the descriptor's dtype (float32 or wider), also
        under autocast."""
        if self.hidden_weight is not None and self.hidden_bias is not None:
            s = F.relu(full_precision_linear(s, self.hidden_weight, self.hidden_bias))
        z = full_precision_linear(s, self.weight, self.bias)
        if self.norm is not None:
            z = self.norm(z)
        if self.head.endswith("softmax"):
            return torch.softmax(z, dim=1)
        if self.head.endswith("hsigmoid"):
            return hard_sigmoid(z)
        return torch.sigmoid(z)

    def extra_repr(self) -> str:
        return f"head={self.head}, pooling={self.pooling}, mixtures={self.weight.shape[0]}"
