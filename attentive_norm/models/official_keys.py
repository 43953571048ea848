"""Our state-dict key names -> the authors' (iVMCL/AOGNet-v2), for exporting and for checking layouts.

The other direction needs no helper: AN layers accept the authors' names in ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ..layers.attentive_norm import _OFFICIAL_RENAMES

_TO_OFFICIAL: dict[str, str] = {ours: theirs for theirs, ours in _OFFICIAL_RENAMES}


def to_official_key_names(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A copy of ``state_dict`` with each AN layer's keys in the authors' layout, order kept.

    An AN layer is recognised by its ``<prefix>.mixture_weight``; only keys under such a prefix are
    renamed (``mixture_weight`` -> ``weight_``, ``attention.norm.*`` -> ``attention_weights.attention.1.*``,
    ...) and the K×C attention projection becomes their K×C×1×1 conv weight. Other keys are unchanged.
    """
    suffix = "mixture_weight"
    an_prefixes = {key[: -len(suffix)] for key in state_dict if key.endswith(suffix)}
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        prefix = next((p for p in an_prefixes if key.startswith(p) and key[len(p) :] in _TO_OFFICIAL), None)
        if prefix is None:
            out[key] = value
            continue
        theirs = _TO_OFFICIAL[key[len(prefix) :]]
        if theirs == "attention_weights.attention.0.weight":
            value = value[:, :, None, None]
        out[prefix + theirs] = value
    return out
