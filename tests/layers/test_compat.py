"""AN layers work wherever a norm layer must: torch.compile, TorchScript, FX, ONNX, channels_last,
autocast, float64 and gradcheck; each checked against the eager output."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from attentive_norm import AttentiveBatchNorm2d, AttentiveGroupNorm

# TorchScript is deprecated in favour of torch.compile/export, but still how many deploy models.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")

LAYERS: dict[str, Callable[[int], nn.Module]] = {
    "bn": lambda channels: AttentiveBatchNorm2d(channels, 3),
    "gn": lambda channels: AttentiveGroupNorm(channels, num_groups=4, num_mixtures=3),
}

COMPILED_LAYERS: dict[str, Callable[[int], nn.Module]] = {
    **LAYERS,
    # momentum=None: a cumulative average, whose factor 1/num_batches must not need .item().
    "bn_cumulative": lambda channels: AttentiveBatchNorm2d(
        channels, 3, momentum=None, attention_momentum=None
    ),
}


def _small_model(layer: str) -> nn.Module:
    """Conv -> AN -> ReLU -> Conv, the setting an AN layer lives in."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), LAYERS[layer](8), nn.ReLU(), nn.Conv2d(8, 4, 1))


def _randomise_running_stats(model: nn.Module) -> None:
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_()
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)


def _assert_same_state(candidate: nn.Module, eager: nn.Module) -> None:
    """Every tensor of ``candidate``'s state (a traced graph keeps only those it uses) equals eager's."""
    expected = eager.state_dict()
    for name, value in candidate.state_dict().items():
        torch.testing.assert_close(value, expected[name], msg=lambda m, name=name: f"{name}: {m}")


def _assert_matches_eager(candidate: nn.Module, eager: nn.Module, x: Tensor) -> None:
    """Same outputs and same running-statistics updates as eager, in training and in eval."""
    for training in (True, False):
        candidate.train(training)
        eager.train(training)
        torch.testing.assert_close(candidate(x), eager(x))
        _assert_same_state(candidate, eager)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("layer", "backend"),
    # aot_eager: whole-graph capture and functionalised buffer updates, in seconds. inductor: the
    # generated kernels too; the first inductor compile on a machine also builds its C++ toolchain
    # cache (~1-2 min on 2 cores), later ones take ~20 s.
    [("bn", "aot_eager"), ("gn", "aot_eager"), ("bn_cumulative", "aot_eager"), ("bn", "inductor")],
)
def test_torch_compile_fullgraph_matches_eager(layer: str, backend: str) -> None:
    torch._dynamo.reset()
    model = COMPILED_LAYERS[layer](8)
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    x_eager = x.detach().clone().requires_grad_()

    out, out_eager = compiled(x), eager(x_eager)
    torch.testing.assert_close(out, out_eager, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_eager.backward(grad)
    torch.testing.assert_close(x.grad, x_eager.grad, rtol=1e-4, atol=1e-5)
    for (name, p), (_, p_eager) in zip(model.named_parameters(), eager.named_parameters()):
        torch.testing.assert_close(p.grad, p_eager.grad, rtol=1e-4, atol=1e-5, msg=name)
    _assert_same_state(model, eager)

    model.eval()
    eager.eval()
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", LAYERS)
def test_torchscript_layer_and_model_match_eager(layer: str) -> None:
    layer_module = LAYERS[layer](8)
    _assert_matches_eager(
        torch.jit.script(copy.deepcopy(layer_module)), layer_module, torch.randn(3, 8, 5, 4)
    )

    model = _small_model(layer)
    _randomise_running_stats(model)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(copy.deepcopy(model)), buffer)
    buffer.seek(0)
    _assert_matches_eager(torch.jit.load(buffer), model, torch.randn(2, 3, 6, 6))


def test_torchscript_raises_on_bad_input() -> None:
    scripted = torch.jit.script(AttentiveBatchNorm2d(8, 3))
    with pytest.raises(Exception, match="built for 8 channels"):
        scripted(torch.randn(2, 4, 3, 3))


@pytest.mark.parametrize("layer", LAYERS)
def test_fx_symbolic_trace_matches_eager(layer: str) -> None:
    model = _small_model(layer)
    _randomise_running_stats(model)
    image = torch.randn(2, 3, 6, 6)
    for training in (True, False):
        # AN layers are not FX leaf modules, so a traced graph fixes the mode: trace once per mode.
        eager = copy.deepcopy(model).train(training)
        traced = torch.fx.symbolic_trace(copy.deepcopy(model).train(training))
        torch.testing.assert_close(traced(image), eager(image))
        _assert_same_state(traced, eager)
        assert ("normalize_batch" in traced.code) == (training and layer == "bn")


def test_fx_trace_keeps_full_precision_attention_under_autocast() -> None:
    layer = AttentiveBatchNorm2d(8, 3).eval()
    _randomise_running_stats(layer)
    traced = torch.fx.symbolic_trace(layer)
    x = torch.randn(2, 8, 5, 5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # Bit-identical: the traced graph also runs the attention and the mixture in float32.
        torch.testing.assert_close(traced(x), layer(x), rtol=0, atol=0)


@pytest.mark.slow
def test_onnx_export_matches_eager_in_onnxruntime(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = _small_model("bn").eval()
    _randomise_running_stats(model)
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        model, (torch.randn(2, 3, 6, 6),), dynamo=True, dynamic_shapes=({0: batch},), verbose=False
    )
    path = tmp_path / "an.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch_size in (1, 5):
        image = torch.randn(batch_size, 3, 6, 6)
        (out,) = session.run(None, {session.get_inputs()[0].name: image.numpy()})
        torch.testing.assert_close(torch.from_numpy(out), model(image), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer", LAYERS)
def test_channels_last_keeps_format_and_values(layer: str) -> None:
    model = LAYERS[layer](8)
    eager = copy.deepcopy(model)
    x = torch.randn(3, 8, 5, 4)
    x_last = x.to(memory_format=torch.channels_last).requires_grad_()
    x = x.requires_grad_()
    for training in (True, False):
        model.train(training)
        eager.train(training)
        out = model(x_last)
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, eager(x))
    out.sum().backward()
    assert x_last.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layer", LAYERS)
def test_bf16_autocast_is_close_to_fp32(layer: str) -> None:
    model = _small_model(layer)
    reference = copy.deepcopy(model)
    weight_dtypes = []
    model[1].attention.register_forward_hook(lambda module, args, lam: weight_dtypes.append(lam.dtype))
    image = torch.randn(4, 3, 8, 8)
    for training in (True, False):
        model.train(training)
        reference.train(training)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = model[0](image)
            normalised = model[1](features)
        assert features.dtype == normalised.dtype == torch.bfloat16
        expected = reference[1](reference[0](image))
        torch.testing.assert_close(normalised.float(), expected, rtol=0.05, atol=0.05)
    assert weight_dtypes == [torch.float32, torch.float32]
    # Running statistics stay float32 and close to those of the fp32 run.
    _assert_same_state_close(model, reference)


def _assert_same_state_close(ours: nn.Module, theirs: nn.Module) -> None:
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, rtol=0.02, atol=0.02, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("layer", LAYERS)
def test_float64_throughout(layer: str) -> None:
    model = LAYERS[layer](8).double()
    for training in (True, False):
        out = model.train(training)(torch.randn(3, 8, 4, 4, dtype=torch.float64))
        assert out.dtype == torch.float64
    assert all(t.dtype == torch.float64 for t in model.parameters())


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck(layer: str, training: bool) -> None:
    model = LAYERS[layer](4).double().train(training)
    _randomise_running_stats(model)
    x = torch.randn(3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    params = tuple(model.parameters())

    def run(x: Tensor, *values: Tensor) -> Tensor:
        return torch.func.functional_call(model, dict(zip(dict(model.named_parameters()), values)), (x,))

    assert torch.autograd.gradcheck(run, (x, *params), fast_mode=True)
