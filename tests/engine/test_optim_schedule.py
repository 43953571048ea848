"""Weight-decay groups (by module type, not shape), the warm-up + cosine schedule, and the EMA."""

import math

import pytest
import torch
from torch import nn

from attentive_norm.engine.ema import ModelEma
from attentive_norm.engine.optim import build_optimizer, param_groups
from attentive_norm.engine.schedule import WarmupCosine
from attentive_norm.layers import AttentiveBatchNorm2d


def small_an_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False),
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 3, bias=False),
        AttentiveBatchNorm2d(8, num_mixtures=4),
        nn.Flatten(),
        nn.LazyLinear(5),
    )


def names_of(model: nn.Module, params: list) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_the_paper_decays_every_parameter():
    model = small_an_net()
    model(torch.randn(2, 3, 8, 8))
    groups = param_groups(model, 1e-4)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 1e-4
    assert names_of(model, groups[0]["params"]) == {n for n, _ in model.named_parameters()}


def test_norm_bias_exclusion_selects_by_module_type_not_shape():
    model = small_an_net()
    model(torch.randn(2, 3, 8, 8))
    decay, no_decay = param_groups(model, 1e-4, decay_norm_bias=False)
    assert no_decay["weight_decay"] == 0.0
    assert names_of(model, no_decay["params"]) == {
        "1.weight",
        "1.bias",
        "3.mixture_weight",  # K×C, 2-D, yet a norm parameter
        "3.mixture_bias",
        "3.attention.norm.weight",
        "3.attention.norm.bias",
        "5.bias",
    }
    # the attention projection (K×C) and the convolutions and classifier weights are decayed
    assert names_of(model, decay["params"]) == {"0.weight", "2.weight", "3.attention.weight", "5.weight"}


def test_frozen_parameters_are_left_out():
    model = small_an_net()
    model(torch.randn(2, 3, 8, 8))
    model[0].requires_grad_(False)
    optimizer = build_optimizer(model, 0.1)
    assert all(p.requires_grad for g in optimizer.param_groups for p in g["params"])
    assert optimizer.defaults["momentum"] == 0.9 and not optimizer.defaults["nesterov"]


def test_schedule_is_the_authors_per_iteration_warmup_then_cosine():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    steps_per_epoch, epochs, warmup_epochs, peak = 10, 20, 5, 0.4
    schedule = WarmupCosine(optimizer, peak, steps_per_epoch * epochs, steps_per_epoch * warmup_epochs)

    def authors(epoch: int, batch: int) -> float:  # the authors' CosineAnnealingLR with iter = batch + 1
        t = epoch + (batch + 1) / steps_per_epoch
        if epoch < warmup_epochs:
            return peak * t / warmup_epochs
        return peak * (1 + math.cos(math.pi * (t - warmup_epochs) / (epochs - warmup_epochs))) / 2

    for epoch in range(epochs):
        for batch in range(steps_per_epoch):
            lr = schedule.set_step(epoch * steps_per_epoch + batch)
            assert lr == pytest.approx(authors(epoch, batch), abs=1e-12)
            assert optimizer.param_groups[0]["lr"] == lr
    assert schedule.lr_at(0) == pytest.approx(peak / 50)
    assert schedule.lr_at(49) == pytest.approx(peak)
    assert schedule.lr_at(199) == pytest.approx(0.0, abs=1e-12)


def test_schedule_state_keeps_the_position_and_this_runs_shape():
    # A resumed run continues at the checkpoint's step with the schedule it is configured with now
    # (--lr, --epochs, --min-lr given on resume apply).
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = WarmupCosine(optimizer, 0.1, 100, 10, min_lr=1e-3)
    schedule.set_step(42)
    same = WarmupCosine(optimizer, 0.1, 100, 10, min_lr=1e-3)
    same.load_state_dict(schedule.state_dict())
    assert same.lr_at(57) == schedule.lr_at(57) and same.last_step == 42
    other = WarmupCosine(optimizer, 0.8, 200, 5, min_lr=0.01)
    other.load_state_dict(schedule.state_dict())
    assert other.last_step == 42 and (other.peak_lr, other.total_steps, other.min_lr) == (0.8, 200, 0.01)


def test_ema_averages_floats_and_copies_counters():
    model = nn.BatchNorm1d(3)
    ema = ModelEma(model, decay=0.75)
    with torch.no_grad():
        model.weight.fill_(5.0)
    model(torch.randn(4, 3))
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full((3,), 0.75 * 1.0 + 0.25 * 5.0))
    assert ema.module.num_batches_tracked.item() == 1
    assert not any(p.requires_grad for p in ema.module.parameters())
