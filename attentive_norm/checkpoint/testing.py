"""Test helpers: checkpoints in the authors' released format (written without apex), random states, and
objects whose unpickling would run code (for the tests that prove no loader unpickles them).

The layout of the authors' released files: legacy (non-zip) ``torch.save``; ``{'epoch', 'arch', 'state_dict',
'best_prec1', 'optimizer'}``; keys ``module.network.`` + the authors' names; fp16 tensors except the
weight, bias and running statistics of ordinary affine BatchNorms (apex keeps those fp32, and the AN
layer's attention BatchNorm is one); ``optimizer`` is apex ``FP16_Optimizer`` state with a pickled
``apex.fp16_utils.loss_scaler.LossScaler`` and the fp32 masters ``fp32_from_fp16`` of the fp16
parameters, in parameter order. The fake apex module exists only while the file is written.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..layers.attention import LogitNorm
from ..models.official_keys import to_official_key_names

PREFIX = "module.network."
_FAKE_MODULES = ("apex", "apex.fp16_utils", "apex.fp16_utils.loss_scaler")


def official_state_from_model(model: nn.Module) -> tuple[OrderedDict[str, Tensor], list[Tensor]]:
    """``model``'s state as the authors' file holds it: ``(state_dict, fp32 masters)``, no prefix.

    Keys get the authors' names; floating tensors are rounded to fp16 except those of affine
    BatchNorms; the masters are the exact fp32 values of the fp16 parameters, in parameter order.
    """
    fp32_keys = official_fp32_keys(model)
    ours = model.state_dict()
    parameters = {name for name, _ in model.named_parameters()}
    state: OrderedDict[str, Tensor] = OrderedDict()
    masters: list[Tensor] = []
    for key, (official_key, value) in zip(ours, to_official_key_names(ours).items()):
        value = value.detach().clone()
        if value.is_floating_point() and key not in fp32_keys:
            if key in parameters:
                masters.append(value.float())
            value = value.half()
        state[official_key] = value
    return state, masters


def write_official_checkpoint(
    state_dict: Mapping[str, Tensor],
    masters: Sequence[Tensor] | None,
    path: str | os.PathLike,
    arch: str = "model",
    extra: Any = None,
) -> None:
    """Save a state dict (the authors' key names, no prefix) as their ``model_best.pth.tar``.

    ``masters`` become ``optimizer['fp32_from_fp16']`` (one parameter group); ``extra`` (if given) is
    stored under ``optimizer['extra']``, e.g. a crafted object for security tests.
    """
    masters = [m.detach().float().requires_grad_(True) for m in masters or []]
    state = OrderedDict((PREFIX + k, v) for k, v in state_dict.items())
    state._metadata = OrderedDict({"": {"version": 1}})  # type: ignore[attr-defined]  # as state_dict() has
    with _fake_apex() as loss_scaler_cls:
        optimizer = {
            "loss_scaler": loss_scaler_cls(128.0),
            "dynamic_loss_scale": False,
            "overflow": False,
            "first_closure_call_this_step": True,
            "optimizer_state_dict": {
                "state": {},  # the momentum buffers: left out, the loader never reads them
                "param_groups": [
                    {
                        "lr": 0.4,
                        "momentum": 0.9,
                        "dampening": 0,
                        "weight_decay": 1e-4,
                        "nesterov": False,
                        "params": list(range(len(masters))),
                    }
                ],
            },
            "fp32_from_fp16": [masters],
        }
        if extra is not None:
            optimizer["extra"] = extra
        checkpoint = {
            "epoch": 120,
            "arch": arch,
            "state_dict": state,
            "best_prec1": torch.tensor(78.41),
            "optimizer": optimizer,
        }
        torch.save(checkpoint, path, _use_new_zipfile_serialization=False)


def official_fp32_keys(model: nn.Module) -> set[str]:
    """Our keys of the modules that are affine BatchNorms in the authors' model (kept fp32 by apex)."""
    keys = set()
    for name, module in model.named_modules():
        affine_bn = isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine
        if affine_bn or isinstance(module, LogitNorm):
            prefix = f"{name}." if name else ""
            keys.update(prefix + k for k in module.state_dict())
    return keys


def randomize_state(model: nn.Module, seed: int = 0) -> None:
    """Give every floating parameter and buffer a random, non-degenerate value (in place).

    Zero-initialised residual gammas or identity running statistics would hide misplaced tensors;
    this perturbs everything: each tensor by N(0, (0.1 s)²), s its spread (1 for a constant tensor),
    and running variances are drawn from U(0.5, 1.5).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            if name.endswith("running_var"):
                noise = torch.rand(value.shape, generator=generator) + 0.5
                value.copy_(noise)
            else:
                spread = value.float().std().item() if value.numel() > 1 else 0.0
                value.add_(0.1 * (spread or 1.0) * torch.randn(value.shape, generator=generator))


class RunsShell:
    """Unpickling this calls ``os.system`` (a shell command creating ``marker``)."""

    def __init__(self, marker: str | os.PathLike) -> None:
        self.marker = Path(marker)

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


class RunsPython:
    """Unpickling this calls ``exec`` (Python code creating ``marker``)."""

    def __init__(self, marker: str | os.PathLike) -> None:
        self.marker = Path(marker)

    def __reduce__(self) -> tuple:
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


@contextlib.contextmanager
def _fake_apex() -> Iterator[type]:
    """Put a fake ``apex.fp16_utils.loss_scaler`` with a ``LossScaler`` class in ``sys.modules``."""
    saved = {name: sys.modules.get(name) for name in _FAKE_MODULES}

    class LossScaler:
        def __init__(self, scale: float = 1.0) -> None:
            self.cur_scale = scale

    module = types.ModuleType(_FAKE_MODULES[-1])
    LossScaler.__module__ = module.__name__
    LossScaler.__qualname__ = "LossScaler"
    module.LossScaler = LossScaler
    for name in _FAKE_MODULES:
        sys.modules[name] = module if name == module.__name__ else types.ModuleType(name)
    try:
        yield LossScaler
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
