"""The zoo's model contract and its feature extractor (multi-scale feature maps for detection, etc.).

Every zoo model class follows one small contract, so that one extractor works for all of them:

- attributes ``num_classes``, ``num_features`` (channels entering the classifier) and ``feature_info``,
  a list of ``{"num_chs": int, "reduction": int, "module": str}``, one per stage output, in forward
  order (timm's convention: ``reduction`` is the stride w.r.t. the input, ``module`` the name in
  ``named_modules()`` whose output is that map, which nothing later may modify in place); the last
  entry has ``num_features`` channels;
- ``forward_features(x)`` returns the last feature map, before pooling;
- ``forward_head(x, pre_logits=False)`` pools and classifies (``pre_logits``: stop before the classifier);
- ``reset_classifier(num_classes)`` replaces the classifier (``0``: no classifier, ``nn.Identity``);
- ``forward(x) == forward_head(forward_features(x))``.

Builders go through :func:`build_model`, so ``create_model(name, features_only=True)`` returns a
:class:`FeatureExtractor` instead of the classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn


class FeatureExtractor(nn.Module):
    """Wraps a zoo model and returns the feature maps its ``feature_info`` names, shallowest first.

    Forward hooks on the named modules collect their outputs while the model's ``forward_features``
    runs, so any model that follows the contract works, whatever its topology. The classifier is
    removed (``reset_classifier(0)``) and never run, so it holds no parameters a DDP-wrapped detector
    would see unused; stages after the last requested one still run (the contract cannot cut them).

    Args:
        model: a zoo model following the contract above.
        out_indices: which entries of ``model.feature_info`` to return (negative counts from the end);
            ``None`` returns all of them.
    """

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        info = list(model.feature_info)
        if out_indices is None:
            out_indices = range(len(info))
        indices = []
        for i in out_indices:
            if not -len(info) <= i < len(info):
                raise ValueError(f"out_indices {tuple(out_indices)} out of range for {len(info)} stages")
            indices.append(i % len(info))
        if len(set(indices)) != len(indices) or indices != sorted(indices):
            raise ValueError(f"out_indices must be increasing and distinct, got {tuple(out_indices)}")
        model.reset_classifier(0)
        self.model = model
        self.out_indices = tuple(indices)
        self.feature_info = [dict(info[i]) for i in indices]
        self.out_channels = [f["num_chs"] for f in self.feature_info]
        self.reductions = [f["reduction"] for f in self.feature_info]
        modules = dict(model.named_modules())
        for f in self.feature_info:
            if f["module"] not in modules:
                raise ValueError(f"feature_info names {f['module']!r}, which {type(model).__name__} lacks")
            modules[f["module"]].register_forward_hook(_keep_output)

    def forward(self, x: Tensor) -> list[Tensor]:
        modules = [self.model.get_submodule(f["module"]) for f in self.feature_info]
        try:
            self.model.forward_features(x)
            return [m.__dict__[_OUTPUT] for m in modules]
        finally:
            for m in modules:
                m.__dict__.pop(_OUTPUT, None)


_OUTPUT = "_feature_extractor_output"


def _keep_output(module: nn.Module, args: Any, output: Tensor) -> None:
    """Forward hook: park the output on the module itself (stateless, so deepcopy/pickle stay correct)."""
    module.__dict__[_OUTPUT] = output


def build_model(
    model_cls: type[nn.Module],
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``model_cls(**kwargs)``, or its :class:`FeatureExtractor` when ``features_only`` is set."""
    if out_indices is not None and not features_only:
        raise ValueError("out_indices only applies with features_only=True")
    model = model_cls(**kwargs)
    if features_only:
        return FeatureExtractor(model, out_indices)
    return model
