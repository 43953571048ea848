"""Using the fp32 master weights of an apex ``FP16_Optimizer`` checkpoint instead of the fp16 copies.

The authors trained in fp16 with fp32 master weights: the optimiser updated the masters and copied
them, rounded, into the fp16 model. The masters are the better weights, but apex stores them as a
bare list (in parameter-group order, one entry per fp16 parameter), without names. They are used only
when the match is unambiguous: the same number of tensors as the fp16 parameters of the state dict,
in order, with equal shapes, and each master rounding to its fp16 copy.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import Tensor


def apply_fp32_masters(
    state_dict: dict[str, Tensor], masters: Sequence[Tensor], parameter_names: Collection[str]
) -> tuple[dict[str, Tensor], str]:
    """``(state_dict with masters substituted, note)``, or the state dict unchanged and why.

    Args:
        state_dict: the checkpoint's tensors, in the checkpoint's order.
        masters: apex's ``fp32_from_fp16`` list, flattened over parameter groups.
        parameter_names: which keys of ``state_dict`` are parameters (not buffers) of the model.
    """
    fp16 = [k for k, v in state_dict.items() if k in parameter_names and v.dtype == torch.float16]
    if len(fp16) != len(masters):
        return state_dict, f"fp16 weights used: {len(masters)} fp32 masters for {len(fp16)} fp16 parameters"
    for key, master in zip(fp16, masters):
        stored = state_dict[key]
        if master.shape != stored.shape:
            return state_dict, (
                f"fp16 weights used: master shape {list(master.shape)} does not match "
                f"{key} {list(stored.shape)}"
            )
        if not torch.equal(master.to(torch.float16), stored):
            return state_dict, f"fp16 weights used: the fp32 master for {key} does not round to its fp16 copy"
    replaced = dict(state_dict)
    replaced.update({key: master.float() for key, master in zip(fp16, masters)})
    return replaced, f"fp32 master weights used for {len(fp16)} fp16 parameters"
