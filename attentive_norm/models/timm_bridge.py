"""Makes the zoo's models available to ``timm.create_model`` (timm is optional).

Each zoo name that timm does not already have (``resnet50_an``, ``resnet50_se``, ...) is registered
with timm's ``register_model`` through a thin entry point defined in this module, so timm lists them
under the module name ``timm_bridge``. Names timm owns (``resnet50``, ``resnet50d``, ...) are left to
timm: ``timm.create_model("resnet50")`` is still timm's; use ``attentive_norm.create_model`` for ours.

``import attentive_norm`` calls :func:`install`, which must stay cheap and never fail: if timm is
already imported the models are registered at once, otherwise a one-shot import hook registers them
right after ``timm`` is first imported (importing timm eagerly would cost seconds). The entry points
download nothing: ``pretrained=True`` is refused. ``attentive_norm.create_model(name, pretrained=<path>)``
reads every checkpoint; timm's ``checkpoint_path=...`` reads our safetensors files and plain state
dicts, not the authors' apex files (timm's weights-only load refuses their pickled apex class; convert
them with ``attentive-norm convert``).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from .registry import get_model_entrypoint, list_models

__all__ = ["install", "register_timm_models"]


def _timm_entrypoint(name: str) -> Callable[..., nn.Module]:
    """A timm-style entry point (accepting timm's pretrained-config arguments) for our model ``name``."""

    def entrypoint(
        pretrained: bool = False,
        pretrained_cfg: Any = None,
        pretrained_cfg_overlay: Any = None,
        cache_dir: Any = None,
        **kwargs: Any,
    ) -> nn.Module:
        if pretrained:
            raise ValueError(
                f"{name} has no downloadable weights: use attentive_norm.create_model({name!r}, "
                "pretrained=<path>) (any checkpoint, the authors' included), or pass timm.create_model "
                "checkpoint_path=<our .safetensors or a state dict>; `attentive-norm convert` turns the "
                "authors' files (which timm's loader refuses) into safetensors"
            )
        return get_model_entrypoint(name)(**kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = get_model_entrypoint(name).__doc__
    return entrypoint


def register_timm_models() -> list[str]:
    """Register with timm every zoo model whose name timm lacks; idempotent. Returns the new names."""
    from timm.models import is_model
    from timm.models import register_model as timm_register_model

    added = []
    for name in list_models():
        if is_model(name):  # timm's own name, or already registered by an earlier call
            continue
        entrypoint = _timm_entrypoint(name)
        globals()[name] = entrypoint  # timm lists the name in this module's __all__; make it real
        timm_register_model(entrypoint)
        added.append(name)
    return added


def _register_quietly() -> None:
    try:
        register_timm_models()
    except Exception as exc:  # never break ``import timm`` or ``import attentive_norm``
        warnings.warn(f"attentive_norm: could not register its models with timm: {exc!r}", stacklevel=2)


class _RegisterAfterTimmImport(importlib.abc.MetaPathFinder):
    """Import hook: lets the other finders locate ``timm``, and registers our models once it has run.

    It only wraps the loader, so a mere ``importlib.util.find_spec("timm")`` (availability checks)
    changes nothing; the hook removes itself when timm is actually imported.
    """

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "timm":
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if finder is self or find is None else find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            exec_module = spec.loader.exec_module

            def exec_then_register(module: Any) -> None:
                exec_module(module)
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
                _register_quietly()

            spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    """Register with timm now if it is imported, else once it is; nothing if timm is not installed."""
    if sys.modules.get("timm") is not None:
        _register_quietly()
    elif not any(isinstance(f, _RegisterAfterTimmImport) for f in sys.meta_path):
        try:
            installed = importlib.util.find_spec("timm") is not None
        except (ImportError, ValueError):
            installed = False
        if installed:
            sys.meta_path.insert(0, _RegisterAfterTimmImport())
