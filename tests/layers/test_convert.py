"""convert_norm: BatchNorm2d layers of a network become AN, optionally without changing its output."""

import copy
import re
import warnings

import pytest
import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d

from attentive_norm import AttentiveBatchNorm2d, convert_norm
from attentive_norm.layers import ATTENTION_HEADS, FrozenStatsBatchNorm2d, matching_norms


def _randomise_batch_norms(model: nn.Module) -> nn.Module:
    """Pretend the model was trained: non-trivial statistics and affine in every BatchNorm."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
                module.num_batches_tracked.fill_(7)
    return model


def _pretrained_resnet18() -> nn.Module:
    return _randomise_batch_norms(resnet18(num_classes=10)).double()


def _norm_names(model: nn.Module, kind: type[nn.Module]) -> list[str]:
    return [name for name, module in model.named_modules() if type(module) is kind]


@pytest.mark.parametrize("include", [None, "*.bn2"])
@pytest.mark.parametrize("training", [False, True])
def test_preserve_output_keeps_resnet_function(include: str | None, training: bool) -> None:
    original = _pretrained_resnet18().train(training)
    converted = convert_norm(copy.deepcopy(original), include=include, preserve_output=True)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)

    torch.testing.assert_close(converted(x), original(x), rtol=1e-10, atol=1e-10)

    # Training also moved both models' running statistics identically.
    for name, module in converted.named_modules():
        if isinstance(module, AttentiveBatchNorm2d):
            bn = original.get_submodule(name)
            torch.testing.assert_close(module.running_mean, bn.running_mean, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(module.running_var, bn.running_var, rtol=1e-12, atol=1e-12)
            assert module.num_batches_tracked.item() == bn.num_batches_tracked.item()


def test_pattern_selects_only_matching_layers() -> None:
    model = _pretrained_resnet18()
    expected = [name for name in _norm_names(model, nn.BatchNorm2d) if name.endswith(".bn2")]
    assert matching_norms(model, "*.bn2") == expected

    convert_norm(model, include="*.bn2")

    assert _norm_names(model, AttentiveBatchNorm2d) == expected
    assert all(not name.endswith(".bn2") for name in _norm_names(model, nn.BatchNorm2d))


def test_regex_predicate_and_per_layer_mixtures() -> None:
    stage_mixtures = {"layer1": 10, "layer2": 10, "layer3": 20, "layer4": 20}
    by_regex = convert_norm(
        resnet18(),
        include=re.compile(r"layer[34]\.\d+\.bn1"),
        num_mixtures=lambda name, _module: stage_mixtures[name.split(".")[0]],
    )
    by_predicate = convert_norm(resnet18(), include=lambda name, module: name.startswith("layer3"))

    assert _norm_names(by_regex, AttentiveBatchNorm2d) == [
        "layer3.0.bn1",
        "layer3.1.bn1",
        "layer4.0.bn1",
        "layer4.1.bn1",
    ]
    assert {by_regex.get_submodule(n).num_mixtures for n in ["layer3.0.bn1", "layer4.1.bn1"]} == {20}
    assert _norm_names(by_predicate, AttentiveBatchNorm2d) == [
        "layer3.0.bn1",
        "layer3.0.bn2",
        "layer3.0.downsample.1",
        "layer3.1.bn1",
        "layer3.1.bn2",
    ]


def test_carries_over_settings_statistics_and_mode() -> None:
    bn = nn.BatchNorm2d(6, eps=1e-3, momentum=0.03, dtype=torch.float64)
    _randomise_batch_norms(bn)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, dtype=torch.float64), bn).eval()

    convert_norm(model, num_mixtures=4, attention="conv_bn_softmax", attention_momentum=0.2)

    layer = model[1]
    assert isinstance(layer, AttentiveBatchNorm2d)
    assert (layer.num_features, layer.num_mixtures, layer.eps, layer.momentum) == (6, 4, 1e-3, 0.03)
    assert layer.attention.head == "conv_bn_softmax" and layer.attention.norm.momentum == 0.2
    assert not layer.training and layer.mixture_weight.dtype == torch.float64
    assert torch.equal(layer.running_mean, bn.running_mean) and torch.equal(layer.running_var, bn.running_var)
    assert layer.num_batches_tracked.item() == 7


def test_without_preserve_output_the_paper_init_is_used() -> None:
    model = convert_norm(nn.Sequential(_randomise_batch_norms(nn.BatchNorm2d(64))), num_mixtures=10)
    layer = model[0]
    assert abs(layer.mixture_weight.mean().item() - 1.0) < 0.05
    assert 0.05 < layer.mixture_weight.std().item() < 0.15
    assert torch.equal(layer.attention.norm.weight, torch.ones(10))


@pytest.mark.parametrize("head", ATTENTION_HEADS)
@pytest.mark.parametrize("affine", [True, False])
def test_preserve_output_for_every_attention_head(head: str, affine: bool) -> None:
    bn = nn.BatchNorm2d(8, affine=affine, dtype=torch.float64)
    if affine:
        _randomise_batch_norms(bn)
    original = nn.Sequential(bn)
    converted = convert_norm(copy.deepcopy(original), num_mixtures=5, attention=head, preserve_output=True)
    x = torch.randn(3, 8, 5, 5, dtype=torch.float64) * 2 + 1
    for training in (True, False):
        torch.testing.assert_close(converted.train(training)(x), original.train(training)(x))


def test_attention_learns_from_the_first_step() -> None:
    model = convert_norm(_pretrained_resnet18().float(), include="*.bn2", preserve_output=True)
    layers = [m for m in model.modules() if isinstance(m, AttentiveBatchNorm2d)]
    before = [copy.deepcopy(layer.attention.state_dict()) for layer in layers]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, target = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])

    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), target).backward()
        optimizer.step()

    for layer, state in zip(layers, before):
        assert not torch.equal(layer.attention.norm.weight, state["norm.weight"])
        assert not torch.equal(layer.attention.weight, state["weight"])  # reached through the norm weight


def test_sync_batch_norm_is_converted_and_shared_modules_stay_shared() -> None:
    shared = nn.BatchNorm2d(4)
    model = nn.Sequential(nn.SyncBatchNorm(4), shared, nn.Sequential(shared))
    with pytest.warns(UserWarning, match="not synchronised"):
        convert_norm(model)
    assert isinstance(model[0], AttentiveBatchNorm2d) and model[0].process_group is None
    assert isinstance(model[1], AttentiveBatchNorm2d) and model[2][0] is model[1]


def test_root_batch_norm_is_returned_converted() -> None:
    assert isinstance(convert_norm(nn.BatchNorm2d(4)), AttentiveBatchNorm2d)


def test_frozen_batch_norm_gives_frozen_layer() -> None:
    model = nn.Sequential(nn.BatchNorm2d(4).requires_grad_(False))
    convert_norm(model)
    assert not any(p.requires_grad for p in model.parameters())


def test_errors_and_warnings() -> None:
    model = resnet18()
    with pytest.raises(ValueError, match="no convertible BatchNorm"):
        convert_norm(model, include="*.bn9")
    with pytest.raises(TypeError, match="eps"):
        convert_norm(model, eps=1e-3)
    with pytest.raises(TypeError, match="include"):
        convert_norm(model, include=3)

    class BatchNormWithExtras(nn.BatchNorm2d):
        pass

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert_norm(nn.Sequential(nn.BatchNorm2d(2), BatchNormWithExtras(2)))
    assert any("BatchNormWithExtras" in str(w.message) for w in caught)


def test_torchvision_frozen_batch_norm_becomes_an_with_frozen_statistics() -> None:
    """torchvision's detection backbones use FrozenBatchNorm2d; AN there learns, statistics stay fixed."""
    original = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3).double()
    with torch.no_grad():
        for module in original.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1.0, 0.2)
    converted = convert_norm(copy.deepcopy(original), include="*.bn2", preserve_output=True).train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    before = {name: b.clone() for name, b in converted.named_buffers()}

    for key, value in converted(x).items():
        torch.testing.assert_close(value, original(x)[key])
    layer = converted.body.layer1[0].bn2
    assert isinstance(layer, AttentiveBatchNorm2d) and layer.freeze_stats
    assert all(p.requires_grad for p in layer.parameters())
    assert all(torch.equal(b, before[name]) for name, b in converted.named_buffers())


def test_frozen_stats_batch_norm_is_convertible() -> None:
    bn = _randomise_batch_norms(nn.BatchNorm2d(4, dtype=torch.float64))
    original = nn.Sequential(FrozenStatsBatchNorm2d.from_batch_norm(bn))
    converted = convert_norm(copy.deepcopy(original), num_mixtures=3, preserve_output=True)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(converted.train()(x), original(x))
    assert converted[0].freeze_stats and converted[0].mixture_weight.requires_grad
