"""The timm bridge: our names in timm's registry, timm's own names untouched, no hard dependency.

Import order matters (the bridge hooks the first ``import timm``), so each case runs in a fresh
interpreter.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("timm")

PRELUDE = """
import sys, warnings
import torch
torch.set_num_threads(1)
warnings.simplefilter("always")
"""

AFTER_TIMM_CHECKS = """
from attentive_norm.models.features import FeatureExtractor
from attentive_norm.models.resnet import ResNet

assert not [w for w in caught if "Overwriting" in str(w.message)], [str(w.message) for w in caught]
model = timm.create_model("resnet50_an", num_classes=10)
assert isinstance(model, ResNet) and model.placement == "bn2" and model.num_classes == 10
assert type(timm.create_model("resnet50")).__module__ == "timm.models.resnet"
assert timm.models.model_entrypoint("resnet50d").__module__ == "timm.models.resnet"
assert "resnet50_an" in timm.list_models("resnet50*")
ours = set(timm.list_models(module="timm_bridge"))
assert {"resnet50_an", "resnet101d_an", "resnet50_se", "resnet34_an"} <= ours
assert not ours & {"resnet34", "resnet50", "resnet101", "resnet50d", "resnet101d"}
assert isinstance(timm.create_model("resnet34_an", features_only=True), FeatureExtractor)
try:
    timm.create_model("resnet50_an", pretrained=True)
except ValueError as exc:
    assert "no downloadable weights" in str(exc)
else:
    raise AssertionError("pretrained=True must be refused")
from attentive_norm.models import timm_bridge
assert timm_bridge.register_timm_models() == []
print("OK")
"""


def _run(*parts: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    script = PRELUDE + "".join(textwrap.dedent(part) for part in parts)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]


@pytest.mark.slow
def test_attentive_norm_first_then_timm() -> None:
    _run(
        """
        import importlib.util
        import attentive_norm
        assert "timm" not in sys.modules, "import attentive_norm must not import timm"
        assert importlib.util.find_spec("timm") is not None  # a library probing for timm: no effect
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import timm
        """,
        AFTER_TIMM_CHECKS,
    )


@pytest.mark.slow
def test_timm_first_then_attentive_norm() -> None:
    _run(
        """
        import timm
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import attentive_norm
        """,
        AFTER_TIMM_CHECKS,
    )


@pytest.mark.slow
def test_without_timm() -> None:
    _run(
        """
        import importlib.util
        sys.modules["timm"] = None  # as if timm were not installed
        with warnings.catch_warnings(record=True) as caught:
            import attentive_norm
        assert not caught, [str(w.message) for w in caught]
        assert importlib.util.find_spec("timm") is None
        assert attentive_norm.create_model("resnet34_an", num_classes=3).num_classes == 3
        print("OK")
        """
    )
