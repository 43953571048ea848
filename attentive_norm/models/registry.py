"""The model registry: ``register_model`` entry points, ``create_model`` and ``list_models``.

Every model of the zoo is a function ``name(pretrained=None, **kwargs) -> nn.Module`` decorated with
``@register_model``; ``create_model`` looks the name up, builds the network and, given a checkpoint
path in ``pretrained``, loads it (our own format or the authors').
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

_MODEL_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its function name. Names must be unique."""
    name = fn.__name__
    if name in _MODEL_ENTRYPOINTS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODEL_ENTRYPOINTS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern`` (e.g. ``"*_an"``)."""
    _import_zoo()
    return sorted(name for name in _MODEL_ENTRYPOINTS if fnmatch.fnmatchcase(name, pattern))


def get_model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``; a ``ValueError`` lists close matches for an unknown name."""
    _import_zoo()
    if name not in _MODEL_ENTRYPOINTS:
        close = difflib.get_close_matches(name, list(_MODEL_ENTRYPOINTS), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (attentive_norm.list_models() lists all)")
    return _MODEL_ENTRYPOINTS[name]


def create_model(
    name: str, num_classes: int = 1000, pretrained: str | None = None, **kwargs: Any
) -> nn.Module:
    """Build the registered model ``name``; ``pretrained`` is a checkpoint path to load (never a download).

    Keyword arguments (placement, K, ...) go to the model's builder.
    """
    model = get_model_entrypoint(name)(num_classes=num_classes, **kwargs)
    if pretrained:
        from ..checkpoint import load_checkpoint

        load_checkpoint(model, pretrained)
    return model


def _import_zoo() -> None:
    """Import the model modules so their ``@register_model`` entry points are in the registry."""
    from . import zoo  # noqa: F401
