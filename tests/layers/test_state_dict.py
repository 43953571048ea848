"""State dicts: the authors' key layout loads into our layers, ours round-trips, and the layout version
is recorded in the metadata."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from attentive_norm import AttentiveBatchNorm2d, AttentiveGroupNorm

# One AN layer of the authors' published ResNet-50-AN (``layer1.0.bn2``): key suffixes and shapes.
PUBLISHED_AN_LAYER: dict[str, tuple[int, ...]] = {
    "weight_": (10, 64),
    "bias_": (10, 64),
    "running_mean": (64,),
    "running_var": (64,),
    "num_batches_tracked": (),
    "attention_weights.attention.0.weight": (10, 64, 1, 1),
    "attention_weights.attention.1.weight": (10,),
    "attention_weights.attention.1.bias": (10,),
    "attention_weights.attention.1.running_mean": (10,),
    "attention_weights.attention.1.running_var": (10,),
    "attention_weights.attention.1.num_batches_tracked": (),
}


def _train(layer: nn.Module) -> nn.Module:
    """Move the running statistics away from their initial values."""
    for _ in range(2):
        layer(torch.randn(4, 8, 5, 5) * 2 + 1)
    return layer


def _trained_bn() -> AttentiveBatchNorm2d:
    return _train(AttentiveBatchNorm2d(8, 3))


def _authors_layout(layer: AttentiveBatchNorm2d | AttentiveGroupNorm, prefix: str = "") -> dict[str, Tensor]:
    """The layer's state under the authors' key names (their released files), without any metadata."""
    head = layer.attention
    theirs = {
        "weight_": layer.mixture_weight,
        "bias_": layer.mixture_bias,
        "attention_weights.attention.0.weight": head.weight[:, :, None, None],  # their 1×1 conv
    }
    if head.bias is not None:
        theirs["attention_weights.attention.0.bias"] = head.bias
    if head.norm is not None:
        for name, value in head.norm.state_dict().items():
            theirs[f"attention_weights.attention.1.{name}"] = value
    if isinstance(layer, AttentiveBatchNorm2d):
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            theirs[name] = getattr(layer, name)
    return {prefix + name: value.detach().clone() for name, value in theirs.items()}


def _assert_same_layer(ours: nn.Module, expected: nn.Module) -> None:
    for (name, a), (_, b) in zip(ours.state_dict().items(), expected.state_dict().items()):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"{name}: {m}")
    x = torch.randn(3, 8, 4, 4)
    for training in (False, True):
        torch.testing.assert_close(ours.train(training)(x), expected.train(training)(x))


def test_published_layout_is_what_the_helper_writes_and_loads_strictly() -> None:
    layer = AttentiveBatchNorm2d(64, 10)
    written = _authors_layout(layer)
    assert {name: tuple(value.shape) for name, value in written.items()} == PUBLISHED_AN_LAYER
    published = {name: torch.rand(shape).half() + 0.5 for name, shape in PUBLISHED_AN_LAYER.items()}
    for name in ("num_batches_tracked", "attention_weights.attention.1.num_batches_tracked"):
        published[name] = torch.tensor(1000)
    result = layer.load_state_dict(published)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(
        layer.attention.weight, published["attention_weights.attention.0.weight"].float().flatten(1)
    )
    assert int(layer.attention.norm.num_batches_tracked) == 1000


@pytest.mark.parametrize(
    "build", [lambda: AttentiveBatchNorm2d(8, 3), lambda: AttentiveGroupNorm(8, num_groups=4, num_mixtures=3)]
)
def test_authors_layout_loads_into_the_same_layer(build: Callable[[], nn.Module]) -> None:
    original = _train(build())
    theirs = _authors_layout(original)
    assert not hasattr(theirs, "_metadata")
    fresh = build()
    result = fresh.load_state_dict(theirs)
    assert not result.missing_keys and not result.unexpected_keys
    assert "weight_" in theirs, "the caller's dict is not modified"
    _assert_same_layer(fresh, original)


def test_authors_layout_with_prefix_and_fp16_tensors_loads_into_a_model() -> None:
    """As in their checkpoints: nested under a prefix, most tensors stored in fp16."""
    original = nn.Sequential(nn.Conv2d(3, 8, 3), _trained_bn())
    checkpoint = {f"0.{name}": value for name, value in original[0].state_dict().items()}
    checkpoint.update(_authors_layout(original[1], prefix="1."))
    checkpoint = {
        name: value.half() if value.is_floating_point() else value for name, value in checkpoint.items()
    }
    model = nn.Sequential(nn.Conv2d(3, 8, 3), AttentiveBatchNorm2d(8, 3))
    model.load_state_dict(checkpoint)
    assert all(t.dtype == torch.float32 for t in model.parameters())
    for name, value in model.state_dict().items():
        expected = original.state_dict()[name]
        if value.is_floating_point():
            expected = expected.half().float()
        torch.testing.assert_close(value, expected, msg=name)


def test_own_layout_round_trips_through_torch_save() -> None:
    original = _trained_bn()
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh = AttentiveBatchNorm2d(8, 3)
    fresh.load_state_dict(loaded)
    _assert_same_layer(fresh, original)


def test_version_is_recorded_in_the_metadata() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), AttentiveBatchNorm2d(8, 3), AttentiveGroupNorm(8, 4, 3))
    metadata = model.state_dict()._metadata
    assert metadata["1"]["version"] == AttentiveBatchNorm2d._version == 1
    assert metadata["2"]["version"] == AttentiveGroupNorm._version


def test_own_layout_without_metadata_loads() -> None:
    original = _trained_bn()
    plain = dict(original.state_dict())
    assert not hasattr(plain, "_metadata")
    fresh = AttentiveBatchNorm2d(8, 3)
    fresh.load_state_dict(plain)
    _assert_same_layer(fresh, original)


def test_wrong_mixture_count_is_reported_by_name() -> None:
    theirs = _authors_layout(_trained_bn())
    with pytest.raises(RuntimeError, match="size mismatch for mixture_weight"):
        AttentiveBatchNorm2d(8, 5).load_state_dict(theirs)
