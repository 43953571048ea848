"""Inert stand-ins for the apex classes pickled inside the authors' checkpoints.

The authors trained with apex's ``FP16_Optimizer``, whose state dict holds a pickled
``apex.fp16_utils.loss_scaler.LossScaler`` (``DynamicLossScaler`` with dynamic loss scaling). To read
those files without apex and without running anything from them, torch's weights-only unpickler is
told that exactly these global names resolve to the classes below: plain records that keep the
pickled attributes as data and have no behaviour. Any other global is still refused.
"""

from __future__ import annotations

from typing import Any


class ApexLossScalerStub:
    """Stands in for an apex loss scaler: holds its pickled attributes in ``state``, does nothing else."""

    apex_name = "apex.fp16_utils.loss_scaler.LossScaler"

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        # ``state`` was built by the weights-only unpickler, so it holds only allowed types.
        self.state = dict(state) if isinstance(state, dict) else {"state": state}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.apex_name}, {self.state!r})"


class ApexDynamicLossScalerStub(ApexLossScalerStub):
    """Stands in for apex's ``DynamicLossScaler`` (the same record, another pickled name)."""

    apex_name = "apex.fp16_utils.loss_scaler.DynamicLossScaler"


APEX_SAFE_GLOBALS: tuple[tuple[type, str], ...] = tuple(
    (stub, stub.apex_name) for stub in (ApexLossScalerStub, ApexDynamicLossScalerStub)
)
"""The allow-list entries (``(class, "pickled.name")``) for ``safe_torch_load(allowed_globals=...)``."""
