"""MAC ("FLOPs") and parameter counting: the paper's conventions, and AN's own operations analytically."""

import torch
import torchvision
from torch import nn

from attentive_norm.layers import AttentiveBatchNorm2d, AttentiveGroupNorm
from attentive_norm.models.cifar_resnet import resnet20, resnet20_an
from attentive_norm.models.densenet import densenet121
from attentive_norm.models.flops import (
    attentive_norm_macs,
    count_flops,
    count_flops_per_module,
    count_params,
)
from attentive_norm.models.mobilenetv2 import mobilenetv2


def meta(builder, **kwargs) -> nn.Module:
    """Build a BN model without allocating memory: shapes are all the counter needs."""
    with torch.device("meta"):
        return builder(**kwargs)


def test_published_bn_models() -> None:
    """The paper's and torchvision's tables: ResNet-50 4.09G, DenseNet-121 2.83G, MobileNetV2 0.30G."""
    resnet50 = meta(torchvision.models.resnet50)
    assert count_flops(resnet50) == 4_089_184_256
    assert count_params(resnet50) == 25_557_032
    assert round(count_flops(meta(densenet121)) / 1e9, 2) == 2.83
    assert round(count_flops(meta(mobilenetv2)) / 1e9, 2) == 0.30


def an_macs(n: int, c: int, h: int, w: int, k: int) -> int:
    """The paper's AN (mean*rsqrt(var) pooling, conv + BN + hsigmoid head), written out by hand."""
    pooling, projection, logit_norm, mixing, affine = 2 * c * h * w, k * c, k, 2 * k * c, c * h * w
    return n * (pooling + projection + logit_norm + mixing + affine)


def test_one_an_layer_analytic() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), AttentiveBatchNorm2d(8, num_mixtures=4))
    counts = count_flops_per_module(model, (2, 3, 5, 6))
    assert counts == {"0": 2 * 8 * 5 * 6 * 3 * 9, "1": an_macs(2, 8, 5, 6, 4)}
    assert an_macs(2, 8, 5, 6, 4) == 2 * (3 * 8 * 30 + 3 * 4 * 8 + 4)


def test_an_variants_analytic() -> None:
    shape = (1, 16, 4, 4)
    mean_pool = AttentiveBatchNorm2d(16, 5, pooling="mean")
    assert attentive_norm_macs(mean_pool, shape) == an_macs(*shape, 5) - 16 * 4 * 4
    mlp = AttentiveBatchNorm2d(16, 5, attention="mlp_hsigmoid")
    assert attentive_norm_macs(mlp, shape) == an_macs(*shape, 5) - 5 * 16 - 5 + (2 * 5 * 16 + 2 * 5 * 5)
    gn = AttentiveGroupNorm(16, num_groups=4, num_mixtures=5)  # conv with bias + hsigmoid, no logit norm
    assert attentive_norm_macs(gn, shape) == an_macs(*shape, 5) - 5


def test_an_in_resnet50_adds_a_small_analytic_amount() -> None:
    an = torchvision.models.resnet50()
    an.layer1[0].bn2 = AttentiveBatchNorm2d(64, num_mixtures=10)
    bn_macs = count_flops(meta(torchvision.models.resnet50))
    extra = count_flops(an) - bn_macs
    assert extra == an_macs(1, 64, 56, 56, 10) == 604_042
    assert 0 < extra / bn_macs < 2e-4


def test_cifar_resnet_an_overhead() -> None:
    extra = count_flops(resnet20_an(num_classes=10), (1, 3, 32, 32)) - count_flops(
        resnet20(num_classes=10), (1, 3, 32, 32)
    )
    # AN at bn1 of 3 blocks per stage: (16 ch, 32×32, K=5), (32, 16×16, 5), (64, 8×8, 10).
    assert extra == 3 * (an_macs(1, 16, 32, 32, 5) + an_macs(1, 32, 16, 16, 5) + an_macs(1, 64, 8, 8, 10))
    assert round(count_flops(resnet20(num_classes=10), (1, 3, 32, 32)) / 1e6, 1) == 40.6


def test_conv_and_linear_rules() -> None:
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2),  # 8×4×4 outputs × (4/2)·9
        nn.ConvTranspose2d(8, 6, 2, stride=2),  # 8×4×4 inputs × 6·4
        nn.Flatten(),
        nn.Linear(6 * 8 * 8, 3),
    )
    counts = count_flops_per_module(model, (1, 4, 8, 8))
    assert counts == {"0": 128 * 18, "1": 128 * 24, "3": 384 * 3}


def test_counting_leaves_the_model_as_it_was() -> None:
    model = resnet20_an(num_classes=10).train()
    count_flops(model, (1, 3, 8, 8))
    assert model.training
    assert not any(m._forward_hooks for m in model.modules())


def test_count_params_trainable_only() -> None:
    model = nn.Linear(4, 3)
    model.bias.requires_grad_(False)
    assert count_params(model) == 15 and count_params(model, trainable_only=True) == 12
