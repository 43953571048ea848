"""Third-party BatchNorm converters and init loops leave every AN layer intact: class, state, output.

They select layers by BatchNorm class, and AN (with its logit norm) is deliberately not one. They
therefore neither synchronise nor freeze AN either; these tests pin that down, and that this package's
``convert_sync_norm`` / ``freeze_norm`` are the answer (see the ``layers.convert`` docstring).
"""

import copy
from collections.abc import Callable
from functools import partial

import pytest
import torch
from timm.layers import convert_sync_batchnorm, freeze_batch_norm_2d
from timm.utils.model import freeze
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from attentive_norm import AttentiveBatchNorm2d, AttentiveGroupNorm, freeze_norm

_ATTENTIVE = (AttentiveBatchNorm2d, AttentiveGroupNorm)


def _mixed_model() -> nn.Module:
    """Plain BatchNorm and both AN layers (the GroupNorm one with a BatchNorm-headed attention),
    nested, with statistics moved away from their initial values."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), AttentiveBatchNorm2d(8, 4)),
        nn.Conv2d(8, 8, 3, padding=1),
        AttentiveGroupNorm(8, 4, 3, attention="conv_bn_sigmoid"),
    )
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 6, 6))
    return model


def _attentive_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _ATTENTIVE)}


def _assert_attentive_layers_intact(before: nn.Module, after: nn.Module) -> None:
    """Same AN layers at the same names, same class, equal state, equal output in train and eval."""
    expected, got = _attentive_layers(before), _attentive_layers(after)
    assert got.keys() == expected.keys() and got
    for name, layer in got.items():
        reference = expected[name]
        assert type(layer) is type(reference)
        assert type(getattr(layer.attention, "norm", None)) is type(
            getattr(reference.attention, "norm", None)
        )
        state, reference_state = layer.state_dict(), reference.state_dict()
        assert state.keys() == reference_state.keys()
        assert all(torch.equal(state[key], reference_state[key]) for key in state)
        x = torch.randn(4, layer.mixture_weight.shape[1], 3, 3)
        for training in (True, False):
            out = copy.deepcopy(layer).train(training)(x)
            torch.testing.assert_close(out, copy.deepcopy(reference).train(training)(x))


def _assert_statistics_still_update(model: nn.Module) -> None:
    """What the third-party tools do not do: AN statistics still move in training."""
    layer = next(m for m in model.modules() if isinstance(m, AttentiveBatchNorm2d))
    before = layer.running_mean.clone()
    model.train()(torch.randn(4, 3, 6, 6))
    assert not torch.equal(layer.running_mean, before)


CONVERTERS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "torch.nn.SyncBatchNorm.convert_sync_batchnorm": nn.SyncBatchNorm.convert_sync_batchnorm,
    "timm.layers.convert_sync_batchnorm": convert_sync_batchnorm,
    "timm.layers.freeze_batch_norm_2d": freeze_batch_norm_2d,
}


@pytest.mark.parametrize("converter", CONVERTERS.values(), ids=CONVERTERS.keys())
def test_converter_keeps_attentive_layers(converter: Callable[[nn.Module], nn.Module]) -> None:
    model = _mixed_model()
    original = copy.deepcopy(model)

    converted = converter(model)

    assert type(converted[1]) is not nn.BatchNorm2d  # the converter did convert the plain BatchNorm
    _assert_attentive_layers_intact(original, converted)
    assert converted[3][1].process_group is None  # not synchronised: convert_sync_norm's job
    assert not converted[3][1].freeze_stats  # not frozen: freeze_norm's job


def test_timm_freeze_switches_off_gradients_but_not_statistics() -> None:
    model = _mixed_model()
    original = copy.deepcopy(model)

    freeze(model)

    _assert_attentive_layers_intact(original, model)
    assert not any(p.requires_grad for p in model.parameters())
    _assert_statistics_still_update(model)
    freeze_norm(model, "all")
    layer = model[3][1]
    before = layer.state_dict()
    model.train()(torch.randn(4, 3, 6, 6))
    assert all(torch.equal(value, before[key]) for key, value in layer.state_dict().items())


def test_generic_batch_norm_init_loop_does_not_touch_attentive_layers() -> None:
    model = _mixed_model()
    original = copy.deepcopy(model)

    for module in model.modules():  # torchvision's ResNet init, which timm's models resemble
        if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)

    _assert_attentive_layers_intact(original, model)


def test_torchvision_fpn_builder_with_attentive_norm_layer() -> None:
    """torchvision's detection builder takes any norm_layer; its trainable_layers only flips
    requires_grad, so frozen stages keep updating AN statistics until freeze_norm."""
    norm_layer = partial(AttentiveBatchNorm2d, num_mixtures=3)
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, norm_layer=norm_layer, trainable_layers=2
    )
    torch.manual_seed(0)
    plain = resnet18(norm_layer=norm_layer)

    _assert_attentive_layers_intact(plain, backbone.body)
    assert not any(p.requires_grad for p in backbone.body.layer2.parameters())
    assert all(p.requires_grad for p in backbone.body.layer3.parameters())

    layer = backbone.body.layer2[0].bn2
    before = layer.running_mean.clone()
    backbone.train()(torch.randn(2, 3, 32, 32))
    assert not torch.equal(layer.running_mean, before)

    freeze_norm(backbone.body, "stats")
    before = layer.running_mean.clone()
    backbone.train()(torch.randn(2, 3, 32, 32))
    assert torch.equal(layer.running_mean, before)
