"""Model surgery for Attentive Normalization: put AN into existing networks, synchronise it, freeze it.

- :func:`convert_norm` replaces chosen BatchNorm2d layers of any model (frozen-statistics ones such
  as torchvision's ``FrozenBatchNorm2d`` included) with :class:`AttentiveBatchNorm2d`, optionally so
  that the model computes exactly what it computed before.
- :func:`convert_sync_norm` synchronises batch statistics across processes: plain BatchNorm through
  PyTorch's (or timm's) SyncBatchNorm converter, AN layers through their own ``process_group``.
- :func:`freeze_norm` freezes the statistics ("norm_eval"), or the statistics and the parameters.

Third-party converters and AN: PyTorch's ``nn.SyncBatchNorm.convert_sync_batchnorm``, timm's
``convert_sync_batchnorm``, ``freeze_batch_norm_2d`` and ``utils.model.freeze``, torchvision's
detection builders (``FrozenBatchNorm2d`` norm layers, ``trainable_layers``) and the usual
``isinstance(m, nn.BatchNorm2d)`` init loops all select layers by BatchNorm class. The AN layers and
their logit norm are deliberately not BatchNorm subclasses, so these tools leave them intact (same
class, state and output) instead of rebuilding them as plain norms and dropping the attention and the
mixture. The price is that they also do not synchronise or freeze AN: after them an AN layer still
uses its local batch statistics and still updates its running statistics in training (timm's
``freeze`` and torchvision's ``trainable_layers`` do switch off ``requires_grad`` of its parameters).
Use :func:`convert_sync_norm` and :func:`freeze_norm`, which handle AN and BatchNorm alike.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
import torch.distributed as dist
from torch import nn

from .attention import AttentionHead, LogitNorm
from .attentive_norm import AttentiveBatchNorm2d, AttentiveGroupNorm
from .frozen_stats import FrozenStatsBatchNorm2d

if TYPE_CHECKING:
    from torchvision.ops import FrozenBatchNorm2d

_log = logging.getLogger(__name__)

ModuleSelector = str | re.Pattern[str] | Callable[[str, nn.Module], bool] | None
"""Which layers a converter touches, by qualified name (``"layer1.0.bn2"``): a glob string
(``"*.bn2"``; ``*`` also matches dots), a compiled regex that must match the whole name, or a predicate
``(name, module) -> bool``. ``None`` selects every candidate layer."""

_SYNCABLE_BATCH_NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm2d, nn.SyncBatchNorm)
"""Exact BatchNorm classes the converters rebuild. Subclasses (timm's BatchNormAct2d fuses an
activation, for one) carry more than a BatchNorm and are left alone with a warning."""


def matching_norms(model: nn.Module, include: ModuleSelector = None) -> list[str]:
    """Qualified names of the layers ``convert_norm(model, include=include)`` replaces, in module order."""
    selected = _selector(include)
    convertible = _convertible_types()
    return [
        name
        for name, module in model.named_modules()
        if type(module) in convertible and selected(name, module)
    ]


def convert_norm(
    model: nn.Module,
    *,
    num_mixtures: int | Callable[[str, nn.Module], int] = 10,
    include: ModuleSelector = None,
    preserve_output: bool = False,
    **layer_kwargs: object,
) -> nn.Module:
    """Replace the selected BatchNorm layers with :class:`AttentiveBatchNorm2d`.

    Converts ``nn.BatchNorm2d``, ``nn.SyncBatchNorm`` (assumed to see 4D input, as in CNNs) and the
    frozen-statistics norms torchvision's ``FrozenBatchNorm2d`` and :class:`FrozenStatsBatchNorm2d`.
    Works in place and returns the model (a new module only if ``model`` itself is a BatchNorm), like
    PyTorch's SyncBN converter. Each new layer takes over the running statistics, ``eps``,
    ``momentum``, ``track_running_stats``, device, dtype and train/eval mode of the layer it replaces,
    and also:

    - a ``SyncBatchNorm``'s process group (its default, the world, once torch.distributed is
      initialised);
    - frozen statistics: from a frozen-statistics norm comes an AN layer with ``freeze_statistics()``
      whose mixture and attention train (the paper's detection setting; torchvision's
      ``FrozenBatchNorm2d`` also fixes its affine, which AN replaces by trainable parameters);
    - frozen parameters: if the affine parameters had ``requires_grad=False``, so has the AN layer.

    :func:`matching_norms` lists the layers that will be replaced; the names are also logged (INFO).

    Args:
        num_mixtures: K, or ``(name, module) -> K`` for a per-layer choice.
        include: which layers (see :data:`ModuleSelector`); default every BatchNorm2d.
        preserve_output: make the converted model compute exactly (up to float rounding) what it
            computed before, in training and in eval mode, so a BatchNorm-pretrained network can be
            fine-tuned with AN from where it stands. The attention output is made a constant ``lam0``
            (zero logit-norm weight, or zero projection for heads without a norm) and every mixture
            row is set to ``gamma / sum(lam0)``, ``beta / sum(lam0)``. The zeroed weight still
            receives gradients, so the attention starts learning at the first step. Otherwise the
            mixture and attention get the paper's random initialisation.
        **layer_kwargs: passed to :class:`AttentiveBatchNorm2d` (``attention``, ``pooling``,
            ``pooling_eps``, ``attention_momentum``).

    Raises:
        ValueError: if no layer matched (a mistyped ``include`` would otherwise be a silent no-op).
        TypeError: if ``layer_kwargs`` names a setting taken over from the BatchNorm.
    """
    carried = {"num_features", "eps", "momentum", "track_running_stats", "device", "dtype"}
    if clash := sorted(carried & layer_kwargs.keys()):
        raise TypeError(f"convert_norm takes {', '.join(clash)} from each BatchNorm; do not pass them")
    _warn_about_skipped_subclasses(model, include, "convert_norm")
    names = matching_norms(model, include)
    if not names:
        raise ValueError(f"convert_norm: no convertible BatchNorm layer matches include={include!r}")
    mixtures = num_mixtures if callable(num_mixtures) else lambda _name, _module: num_mixtures

    def build(name: str, bn: nn.Module) -> nn.Module:
        return _attentive_from_batch_norm(bn, mixtures(name, bn), preserve_output, layer_kwargs)

    model = _replace_modules(model, set(names), build)
    _log.info("convert_norm: %d layers now AttentiveBatchNorm2d: %s", len(names), ", ".join(names))
    return model


def convert_sync_norm(
    model: nn.Module, process_group: object | None = None, *, sync_batch_norm: bool = True
) -> nn.Module:
    """Synchronise the batch statistics of every norm layer across the processes of ``process_group``.

    AN layers (main and logit norm, of :class:`AttentiveBatchNorm2d` and of any attention head with a
    norm) compute their training statistics over the union of all processes' batches, differentiably,
    on any device and backend (gloo on CPU included). With ``sync_batch_norm`` (default) the plain
    ``nn.BatchNorm*`` layers become ``nn.SyncBatchNorm`` through timm's converter if timm is installed
    (it keeps timm's fused norm+activation layers whole) or else PyTorch's. PyTorch's SyncBatchNorm
    refuses CPU input in distributed training, so on CPU pass ``sync_batch_norm=False``: AN layers are
    then synchronised and plain BatchNorm stays per-process.

    ``process_group`` defaults to the world group, which must exist then (call
    ``torch.distributed.init_process_group`` first). Works in place; returns the model (a new module if
    ``model`` itself is a BatchNorm).
    """
    if process_group is None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "convert_sync_norm needs torch.distributed.init_process_group() to have run, "
                "or an explicit process_group"
            )
        process_group = dist.group.WORLD
    if sync_batch_norm:
        model = _sync_batch_norm_converter()(model, process_group)
    for module in model.modules():
        if isinstance(module, (AttentiveBatchNorm2d, LogitNorm)):
            module.process_group = process_group
    return model


def freeze_norm(
    model: nn.Module, mode: Literal["stats", "all"] = "stats", include: ModuleSelector = None
) -> nn.Module:
    """Freeze the statistics (``"stats"``) or the statistics and parameters (``"all"``) of norm layers.

    ``"stats"`` ("norm_eval", the paper's detection setting): running statistics are used and no longer
    updated, even in training mode, while parameters keep training: AN layers keep learning their
    mixture and attention (``freeze_statistics``), plain ``nn.BatchNorm2d``/``nn.SyncBatchNorm`` become
    :class:`FrozenStatsBatchNorm2d` with a trainable affine. ``"all"``: AN parameters get
    ``requires_grad=False`` and frozen statistics; plain BatchNorm becomes torchvision's
    ``FrozenBatchNorm2d``. Both survive ``model.train()``: they change the layers, not the mode.

    Works in place; returns the model (a new module if ``model`` itself is a BatchNorm).

    Raises:
        ValueError: for an unknown ``mode``, or when no norm layer matches ``include``.
    """
    if mode not in ("stats", "all"):
        raise ValueError(f"freeze_norm mode must be 'stats' or 'all', got {mode!r}")
    selected = _selector(include)
    _warn_about_skipped_subclasses(model, include, "freeze_norm")
    attentive = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (AttentiveBatchNorm2d, AttentiveGroupNorm)) and selected(name, module)
    ]
    plain_types = (*_SYNCABLE_BATCH_NORMS, FrozenStatsBatchNorm2d)
    plain = {
        name
        for name, module in model.named_modules()
        if type(module) in plain_types and selected(name, module)
    }
    if not attentive and not plain:
        raise ValueError(f"freeze_norm: no norm layer matches include={include!r}")
    for _, layer in attentive:
        _freeze_attentive(layer, mode)

    def build(_name: str, bn: nn.Module) -> nn.Module:
        if mode == "all":
            return _frozen_batch_norm(bn)
        return bn if isinstance(bn, FrozenStatsBatchNorm2d) else FrozenStatsBatchNorm2d.from_batch_norm(bn)

    model = _replace_modules(model, plain, build)
    frozen = sorted([name for name, _ in attentive] + list(plain))
    _log.info("freeze_norm(%s): %d layers: %s", mode, len(frozen), ", ".join(frozen))
    return model


def _selector(include: ModuleSelector) -> Callable[[str, nn.Module], bool]:
    if include is None:
        return lambda _name, _module: True
    if isinstance(include, str):
        return lambda name, _module: fnmatch.fnmatchcase(name, include)
    if isinstance(include, re.Pattern):
        return lambda name, _module: include.fullmatch(name) is not None
    if callable(include):
        return include
    raise TypeError(f"include must be a glob string, a compiled regex or a predicate, got {include!r}")


def _warn_about_skipped_subclasses(model: nn.Module, include: ModuleSelector, caller: str) -> None:
    selected = _selector(include)
    skipped = [
        f"{name} ({type(module).__name__})"
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        and type(module) not in _SYNCABLE_BATCH_NORMS
        and selected(name, module)
    ]
    if skipped:
        warnings.warn(
            f"{caller}: left these BatchNorm subclasses unchanged (they may carry more than a "
            f"BatchNorm): {', '.join(skipped)}",
            stacklevel=3,
        )


def _replace_modules(
    model: nn.Module, names: set[str], build: Callable[[str, nn.Module], nn.Module]
) -> nn.Module:
    """Swap the modules at ``names`` for ``build(name, module)``; a module shared by several parents
    is built once and stays shared."""
    replacements: dict[int, nn.Module] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if id(module) not in replacements:
            if name not in names:
                continue
            replacements[id(module)] = build(name, module)
        new = replacements[id(module)]
        if name == "":
            return new
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, new)
    return model


def _convertible_types() -> tuple[type[nn.Module], ...]:
    from torchvision.ops import FrozenBatchNorm2d  # imported on use: torchvision takes seconds to load

    return (*_SYNCABLE_BATCH_NORMS, FrozenStatsBatchNorm2d, FrozenBatchNorm2d)


def _attentive_from_batch_norm(
    bn: nn.Module, num_mixtures: int, preserve_output: bool, layer_kwargs: dict[str, object]
) -> AttentiveBatchNorm2d:
    """An AN layer in ``bn``'s place: a BatchNorm2d/SyncBatchNorm or a frozen-statistics norm."""
    stats_frozen = not isinstance(bn, nn.modules.batchnorm._BatchNorm)
    reference = next((t for t in (*bn.parameters(), *bn.buffers()) if t.is_floating_point()), None)
    layer = AttentiveBatchNorm2d(
        bn.running_mean.numel() if stats_frozen else bn.num_features,
        num_mixtures,
        eps=bn.eps,
        momentum=getattr(bn, "momentum", 0.1),
        track_running_stats=getattr(bn, "track_running_stats", True),
        device=reference.device if reference is not None else None,
        dtype=reference.dtype if reference is not None else None,
        **layer_kwargs,
    ).train(bn.training)
    if bn.running_mean is not None and layer.running_mean is not None:
        with torch.no_grad():
            layer.running_mean.copy_(bn.running_mean)
            layer.running_var.copy_(bn.running_var)
            if getattr(bn, "num_batches_tracked", None) is not None:
                layer.num_batches_tracked.copy_(bn.num_batches_tracked)
    if isinstance(bn, nn.SyncBatchNorm):
        layer.process_group = _sync_group(bn)
        if layer.attention.norm is not None:
            layer.attention.norm.process_group = layer.process_group
    if stats_frozen:
        layer.freeze_statistics(True)
    if preserve_output:
        _reproduce_batch_norm(layer, *_affine(bn))
    parameters = list(bn.parameters())
    if parameters and not any(p.requires_grad for p in parameters):
        layer.requires_grad_(False)
    return layer


def _affine(bn: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A norm's per-channel scale and shift (parameters or, for FrozenBatchNorm2d, buffers); None if
    it has none."""
    if getattr(bn, "affine", True):
        return bn.weight, bn.bias
    return None, None


def _sync_group(bn: nn.SyncBatchNorm) -> object | None:
    if bn.process_group is not None:
        return bn.process_group
    if dist.is_available() and dist.is_initialized():
        return dist.group.WORLD
    warnings.warn(
        "convert_norm: replacing a SyncBatchNorm before torch.distributed is initialised; the AN layer "
        "is not synchronised. Call convert_sync_norm after init_process_group.",
        stacklevel=4,
    )
    return None


def _reproduce_batch_norm(
    layer: AttentiveBatchNorm2d, weight: torch.Tensor | None, bias: torch.Tensor | None
) -> None:
    """Make ``layer`` compute the BatchNorm with affine ``weight``, ``bias`` (identity if None): a
    constant attention and equal mixture rows."""
    head = layer.attention
    with torch.no_grad():
        if head.norm is not None:
            head.norm.weight.zero_()
        else:
            head.weight.zero_()
        lam0 = _constant_attention(head, layer.num_features)
        total = lam0.sum()
        if not total > 0:
            raise ValueError(f"attention head {head.head!r} gives weights summing to {total.item()}")
        channels = layer.num_features
        if weight is None or bias is None:
            weight = torch.ones(channels, device=lam0.device)
            bias = torch.zeros(channels, device=lam0.device)
        layer.mixture_weight.copy_((weight.to(total.dtype) / total).expand_as(layer.mixture_weight))
        layer.mixture_bias.copy_((bias.to(total.dtype) / total).expand_as(layer.mixture_bias))


def _constant_attention(head: AttentionHead, channels: int) -> torch.Tensor:
    """The K weights of a head whose output no longer depends on its input (eval: no stats update)."""
    was_training = head.training
    head.eval()
    try:
        descriptor = torch.zeros(1, channels, device=head.weight.device, dtype=head.weight.dtype)
        return head.weights_from_descriptor(descriptor)[0]
    finally:
        head.train(was_training)


def _freeze_attentive(layer: AttentiveBatchNorm2d | AttentiveGroupNorm, mode: str) -> None:
    if isinstance(layer, AttentiveBatchNorm2d):
        layer.freeze_statistics(True)
    elif layer.attention.norm is not None:
        layer.attention.norm.freeze_stats = True
    if mode == "all":
        layer.requires_grad_(False)


def _frozen_batch_norm(bn: nn.Module) -> FrozenBatchNorm2d:
    """torchvision's FrozenBatchNorm2d (all buffers) holding ``bn``'s statistics and affine."""
    from torchvision.ops import FrozenBatchNorm2d  # imported on use: torchvision takes seconds to load

    stats_frozen = (
        bn if isinstance(bn, FrozenStatsBatchNorm2d) else FrozenStatsBatchNorm2d.from_batch_norm(bn)
    )
    frozen = FrozenBatchNorm2d(stats_frozen.num_features, stats_frozen.eps)
    frozen.to(device=stats_frozen.running_mean.device, dtype=stats_frozen.running_mean.dtype)
    with torch.no_grad():
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, key).copy_(getattr(stats_frozen, key))
    return frozen.train(bn.training)


def _sync_batch_norm_converter() -> Callable[[nn.Module, object], nn.Module]:
    try:
        from timm.layers import convert_sync_batchnorm
    except ImportError:
        return nn.SyncBatchNorm.convert_sync_batchnorm
    return convert_sync_batchnorm
