"""Bringing a checkpoint's key names to the model's: wrapper prefixes and the authors' AN layout."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from torch import Tensor, nn

from ..models.official_keys import to_official_key_names

WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "network.", "_orig_mod.")
"""Prefixes added by wrappers: DDP/DataParallel (``module.``), the authors' fp16 wrapper
(``network.``; their files carry both, ``module.network.``) and ``torch.compile`` (``_orig_mod.``)."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DataParallel/DistributedDataParallel (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers, which share its parameters: loading into it loads into the wrapper."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def strip_wrapper_prefixes(
    state_dict: Mapping[str, Tensor], model_keys: Collection[str]
) -> dict[str, Tensor]:
    """Remove wrapper prefixes shared by every key (repeatedly), unless the model's own keys have them."""
    state = dict(state_dict)
    stripped = True
    while state and stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state) and not all(k.startswith(prefix) for k in model_keys):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


def to_model_key_names(
    state_dict: Mapping[str, Tensor], model_state: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Rename the authors' AN keys (``weight_``, ``attention_weights.attention.0.weight``, ...) to the
    model's, order kept; their K×C×1×1 attention conv becomes our K×C projection. Keys the model does
    not know under either name are kept as they are (the caller reports them)."""
    official_to_ours = dict(zip(to_official_key_names(model_state), model_state))
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        ours = key if key in model_state else official_to_ours.get(key, key)
        if ours != key and value.dim() == 4 and model_state[ours].dim() == 2 and value.shape[2:] == (1, 1):
            value = value.flatten(1)
        out[ours] = value
    return out


def compare_keys(
    state: Mapping[str, Tensor], model_state: Mapping[str, Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """How ``state`` fails to fit ``model_state``: model keys it lacks, keys the model lacks, and shared
    keys whose shapes differ (each in its dict's order)."""
    missing = [k for k in model_state if k not in state]
    unexpected = [k for k in state if k not in model_state]
    wrong_shape = [k for k in state if k in model_state and state[k].shape != model_state[k].shape]
    return missing, unexpected, wrong_shape


def parameter_key_names(model: nn.Module) -> set[str]:
    """The names of the model's parameters (not buffers), ours and the authors' for AN layers."""
    model_state = model.state_dict()
    parameters = {name for name, _ in model.named_parameters()}
    official = to_official_key_names(model_state)
    return parameters | {theirs for theirs, ours in zip(official, model_state) if ours in parameters}
