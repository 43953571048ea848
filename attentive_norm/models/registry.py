"""The model registry: ``register_model`` entry points, ``create_model`` and ``list_models``.

Every model of the zoo is a function ``name(pretrained=None, **kwargs) -> nn.Module`` decorated with
``@register_model``; ``create_model`` looks the name up, builds the network and, given a checkpoint
path in ``pretrained``, loads it (our own format or the authors'), before any feature-extractor
wrapping and with a fresh classifier where another class count is asked for.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from .features import FeatureExtractor

if TYPE_CHECKING:
    from ..checkpoint import CheckpointContents

_log = logging.getLogger(__name__)
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
    name: str,
    num_classes: int | None = None,
    pretrained: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the registered model ``name``; ``pretrained`` is a checkpoint path to load (never a download).

    Args:
        num_classes: classifier outputs; ``None``: the file's own count where ``pretrained`` names one
            that says it (our checkpoints do), else the builder's default (1000; 10 for the CIFAR
            ResNets).
        pretrained: a checkpoint (ours or the authors'). Its classifier is loaded when it fits. With
            ``features_only=True``, or a ``num_classes`` other than the file's, everything but the
            classifier is loaded and the classifier starts fresh (fine-tuning on other classes).
        kwargs: to the model's builder (placement, K, ``features_only``, ``out_indices``, ...).
    """
    builder = get_model_entrypoint(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if not pretrained:  # None, False, "": random weights
        return builder(**kwargs)
    if not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(
            f"pretrained takes a checkpoint path (nothing is ever downloaded), got {pretrained!r}"
        )
    from ..checkpoint import read_checkpoint

    features_only = kwargs.pop("features_only", False)
    out_indices = kwargs.pop("out_indices", None)
    if out_indices is not None and not features_only:
        raise ValueError("out_indices only applies with features_only=True")
    contents = read_checkpoint(pretrained)
    if num_classes is None and contents.num_classes:
        kwargs["num_classes"] = contents.num_classes
    model = builder(**kwargs)
    _load_pretrained(model, contents, new_classifier_allowed=features_only or num_classes is not None)
    return FeatureExtractor(model, out_indices) if features_only else model


def _load_pretrained(model: nn.Module, contents: CheckpointContents, new_classifier_allowed: bool) -> None:
    """Load ``contents`` into ``model``; where allowed and only the classifier does not fit, load the
    rest and give the model a fresh classifier of its own size."""
    from ..checkpoint import CheckpointMismatchError, load_checkpoint

    try:
        load_checkpoint(model, contents)
        return
    except CheckpointMismatchError as error:
        if not new_classifier_allowed:
            raise
        does_not_fit = error
    num_classes = model.num_classes
    model.reset_classifier(1)  # the classifier's key names, also where the model is asked for none
    keys = set(model.state_dict())
    model.reset_classifier(0)
    classifier_keys = keys - set(model.state_dict())
    try:
        info = load_checkpoint(model, contents, strict=False)
    except CheckpointMismatchError:
        raise does_not_fit from None
    if info.missing_keys or not set(info.unexpected_keys) <= classifier_keys:
        raise does_not_fit
    model.reset_classifier(num_classes)
    _log.info("%s: loaded all but the classifier; a new one has %d classes", contents.path, num_classes)


def _import_zoo() -> None:
    """Import the model modules so their ``@register_model`` entry points are in the registry."""
    from . import zoo  # noqa: F401
