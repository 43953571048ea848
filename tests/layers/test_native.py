"""The native CPU inference kernel (layers/native.py, csrc/attentive_norm_cpu.cpp) against the PyTorch
route and the plain formula: every head it takes, both standardisations, NCHW and channels_last,
float64/float32/bfloat16/float16, one instance or many, one thread or two; when it must step aside
(training, gradients, hooks, the MLP head) and what happens where it cannot be built."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from attentive_norm import AttentiveBatchNorm2d, AttentiveGroupNorm
from attentive_norm.layers import attentive_norm as an_module
from attentive_norm.layers import native
from attentive_norm.layers.reference import reference_for_layer

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
TOLERANCES = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-11},
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2},  # one bfloat16 rounding step
    torch.float16: {"rtol": 2e-3, "atol": 2e-3},
}
LAYERS = {
    "bn_paper": lambda c: AttentiveBatchNorm2d(c, 5),
    "bn_softmax_mean": lambda c: AttentiveBatchNorm2d(c, 3, attention="conv_bn_softmax", pooling="mean"),
    "bn_bias_sigmoid": lambda c: AttentiveBatchNorm2d(c, 4, attention="conv_bias_sigmoid"),
    "gn_default": lambda c: AttentiveGroupNorm(c, 4, 6),
    "gn_per_channel": lambda c: AttentiveGroupNorm(c, c, 2),
}


@pytest.fixture(autouse=True)
def _kernel_built() -> None:
    if not native.native_available():
        pytest.fail(f"the native kernel did not build here: {native.native_status()}")


@pytest.fixture
def routes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records, for every layer call, whether the native kernel produced its output."""
    taken: list[bool] = []

    def spy(*args, **kwargs):
        out = native.native_eval_forward(*args, **kwargs)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(an_module, "native_eval_forward", spy)
    return taken


def _pytorch_route(layer: nn.Module, x: Tensor, monkeypatch: pytest.MonkeyPatch) -> Tensor:
    with monkeypatch.context() as patch:
        patch.setattr(an_module, "native_eval_forward", lambda *args, **kwargs: None)
        return layer(x)


def _trained(layer: nn.Module, channels: int) -> nn.Module:
    """A layer whose running statistics (main and logit BatchNorm) have moved off their defaults."""
    layer.train()
    with torch.no_grad():
        for _ in range(3):
            layer(torch.randn(6, channels, 5, 4) * 2.0 + 0.5)
    return layer.eval()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("shape", [(4, 8, 7, 5), (1, 8, 9, 9), (3, 8, 1, 1), (2, 8, 1, 6)])
def test_native_matches_pytorch_route(
    kind: str,
    dtype: torch.dtype,
    memory_format: str,
    shape: tuple[int, ...],
    threads: int,
    routes: list[bool],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # two threads and one instance: the kernel splits each pass
    try:
        layer = _trained(LAYERS[kind](shape[1]), shape[1])
        if dtype == torch.float64:
            layer = layer.double()
        x = (torch.randn(shape, dtype=torch.float64) * 1.5 + 0.7).to(dtype)
        x = x.contiguous(memory_format=FORMATS[memory_format])
        routes.clear()  # GroupNorm layers take the kernel in training too (no batch statistics)
        with torch.inference_mode():
            out = layer(x)
            expected = _pytorch_route(layer, x, monkeypatch)
    finally:
        torch.set_num_threads(previous)
    assert routes == [True]
    assert out.dtype == x.dtype
    assert out.is_contiguous(memory_format=FORMATS[memory_format])
    torch.testing.assert_close(out.double(), expected.double(), **TOLERANCES[dtype])


def test_native_matches_the_paper_formula_in_float64(routes: list[bool]) -> None:
    layer = _trained(AttentiveBatchNorm2d(12, 7), 12).double()
    x = torch.randn(5, 12, 6, 3, dtype=torch.float64) * 3.0 - 1.0
    with torch.no_grad():
        out = layer(x)
        expected = reference_for_layer(layer, x, training=False)
    assert routes == [True]
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_moments_stay_accurate_far_from_zero_and_around_outliers(
    dtype: torch.dtype, memory_format: str, routes: list[bool]
) -> None:
    """The kernel's one-pass moments are shifted by each plane's first value; a plane whose first
    value is an outlier (or whose mean is far from zero) is recomputed with the centred formula."""
    layer = _trained(AttentiveBatchNorm2d(6, 3), 6).to(dtype)
    x = torch.randn(3, 6, 8, 8, dtype=torch.float64) * 0.01 + 1e4
    x[:, :3, 0, 0] = -5e5  # outliers in the position the kernel shifts by
    x = x.to(dtype).contiguous(memory_format=FORMATS[memory_format])
    layer_64 = copy.deepcopy(layer).double()
    with torch.no_grad():
        out = layer(x)
        expected = reference_for_layer(layer_64, x.double(), training=False)
    assert routes == [True]
    tolerance = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-9}
    torch.testing.assert_close(out.double(), expected, **tolerance)


def test_empty_batch_and_constant_input(routes: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    layer = _trained(AttentiveBatchNorm2d(4, 3), 4)
    with torch.no_grad():
        assert layer(torch.empty(0, 4, 5, 5)).shape == (0, 4, 5, 5)
        constant = torch.full((2, 4, 3, 3), 2.5)
        torch.testing.assert_close(layer(constant), _pytorch_route(layer, constant, monkeypatch))
    assert routes == [True, True]


def test_frozen_statistics_take_the_kernel_in_training_mode(routes: list[bool]) -> None:
    layer = _trained(AttentiveBatchNorm2d(8, 4), 8)
    layer.freeze_statistics()
    layer.train()
    routes.clear()
    with torch.no_grad():
        layer(torch.randn(2, 8, 4, 4))
    assert routes == [True]


@pytest.mark.parametrize(
    "situation", ["training", "gradients", "mlp_head", "head_hook", "logit_norm_learning"]
)
def test_pytorch_route_where_the_kernel_does_not_apply(situation: str, routes: list[bool]) -> None:
    head = "mlp_hsigmoid" if situation == "mlp_head" else "conv_bn_hsigmoid"
    layer = _trained(AttentiveBatchNorm2d(8, 4, attention=head), 8)
    seen: list[Tensor] = []
    if situation == "training":
        layer.train()
    if situation == "head_hook":
        layer.attention.register_forward_hook(lambda module, args, lam: seen.append(lam))
    if situation == "logit_norm_learning":
        layer.attention.norm.train()
    x = torch.randn(2, 8, 4, 4)
    if situation == "gradients":
        layer(x).sum().backward()
    else:
        with torch.no_grad():
            layer(x)
    assert routes in ([], [False])
    if situation == "head_hook":
        assert len(seen) == 1 and seen[0].shape == (2, 4)


def test_a_failed_build_leaves_the_pytorch_route(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_compiler() -> None:
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_load", no_compiler)
    layer = _trained(AttentiveBatchNorm2d(8, 4), 8)
    x = torch.randn(2, 8, 4, 4)
    with caplog.at_level(logging.WARNING), torch.no_grad():
        out = layer(x)
        layer(x)
    warnings = [r for r in caplog.records if "native CPU kernel unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "no C++ compiler found" in warnings[0].getMessage()
    assert native.native_status() == "pytorch (RuntimeError: no C++ compiler found)"
    with torch.enable_grad():
        torch.testing.assert_close(out, layer(x).detach())


def test_environment_variable_turns_the_kernel_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv(native.NATIVE_ENV, "0")
    assert not native.native_available()
    assert native.native_status() == f"pytorch (disabled by {native.NATIVE_ENV}=0)"


def test_kernel_rejects_mismatched_parameters() -> None:
    layer = _trained(AttentiveBatchNorm2d(8, 4), 8)
    head = layer.attention
    with pytest.raises(RuntimeError, match="parameter shapes do not match 6 channels"):
        torch.ops.attentive_norm.eval_forward(
            torch.randn(2, 6, 3, 3),
            layer.running_mean,
            layer.running_var,
            0,
            1e-5,
            1,
            1e-3,
            head.weight,
            None,
            None,
            None,
            None,
            None,
            0.0,
            0,
            layer.mixture_weight,
            layer.mixture_bias,
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch warns only where CUDA is unavailable")
def test_loading_the_kernel_does_not_print_the_cuda_discovery_warning(tmp_path: Path) -> None:
    # torch.utils.cpp_extension warns "No CUDA runtime is found, using CUDA_HOME=..." at import on any
    # machine with a CUDA toolkit and no GPU; the kernel is CPU-only, so a user should not see it.
    env = {**os.environ, "CUDA_HOME": str(tmp_path)}

    def stderr_of(code: str) -> str:
        return subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stderr

    warning = "No CUDA runtime is found"
    assert warning in stderr_of("import torch.utils.cpp_extension")  # the control: torch does warn
    assert warning not in stderr_of(
        "from attentive_norm.layers import native; native._import_cpp_extension()"
    )
