"""The training loop in-process, on tiny settings: the run folder, the options, resuming."""

import csv

import pytest
import torch
import yaml

from attentive_norm.checkpoint import load_checkpoint, safe_torch_load
from attentive_norm.engine.attention_maps import an_layer_names, class_mean_attention
from attentive_norm.engine.config import ConfigError, make_config
from attentive_norm.engine.trainer import train
from attentive_norm.models import create_model

TINY = {"epochs": 2, "subset": 64, "batch_size": 32, "image_size": 12, "threads": 1, "progress": False}


def tiny(tmp_path, **overrides):
    return make_config({**TINY, "output": str(tmp_path), **overrides})


@pytest.mark.slow
def test_a_run_writes_its_folder(tmp_path, capsys):
    result = train(tiny(tmp_path, name="run"))
    run = tmp_path / "run"
    assert result.run_dir == run
    for name in ("config.yaml", "summary.csv", "checkpoint_last.pt", "checkpoint_best.pt", "curves.png"):
        assert (run / name).is_file(), name
    assert (run / "attention.png").is_file()
    out = capsys.readouterr().out
    assert "top-1" in out and "img/s" in out and f"run folder: {run}" in out and "final: top-1" in out

    # the resolved configuration reproduces the run's settings
    assert make_config(yaml.safe_load((run / "config.yaml").read_text())) == tiny(tmp_path, name="run")
    rows = list(csv.DictReader((run / "summary.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "val_top1", "val_top5", "lr", "images_per_s"} <= set(rows[0])
    attention = list(csv.DictReader((run / "attention.csv").read_text().splitlines()))
    assert len(attention) == 10 and len(attention[0]) == 1 + 10  # class + K of the last stage

    checkpoint = safe_torch_load(run / "checkpoint_last.pt")
    assert checkpoint["args"] == {"model": "resnet20_an", "num_classes": 10, "model_kwargs": {}}
    assert (checkpoint["epoch"], checkpoint["batch"], checkpoint["step"]) == (2, 0, 4)
    model = create_model("resnet20_an", num_classes=10)
    assert load_checkpoint(model, run / "checkpoint_best.pt").source_format == "training"


def test_options_mixup_smoothing_ema_clipping_bf16_no_decay(tmp_path):
    cfg = tiny(
        tmp_path,
        epochs=1,
        model="resnet20",
        mixup_alpha=0.2,
        label_smoothing=0.1,
        ema_decay=0.9,
        clip_grad=1.0,
        amp="bf16",
        channels_last=True,
        decay_norm_bias=False,
        progress=True,
    )
    result = train(cfg)
    assert torch.isfinite(torch.tensor(result.final["train_loss"]))
    assert "ema_top1" in result.final
    assert not (result.run_dir / "attention.png").exists()  # no AN layer in resnet20
    assert safe_torch_load(result.run_dir / "checkpoint_last.pt")["ema"] is not None


@pytest.mark.slow
def test_resume_continues_a_finished_epoch_bitwise(tmp_path):
    full = train(tiny(tmp_path, name="full"))
    half = train(tiny(tmp_path, name="half", epochs=1))
    resumed = train(tiny(tmp_path, name="half"), resume=half.run_dir)
    assert resumed.run_dir == half.run_dir and len(resumed.history) == 2
    a = safe_torch_load(full.run_dir / "checkpoint_last.pt")["model"]
    b = safe_torch_load(resumed.run_dir / "checkpoint_last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_changed_data_or_model(tmp_path):
    first = train(tiny(tmp_path, name="first", epochs=1))
    with pytest.raises(ConfigError, match="batch_size: 32 -> 16"):
        train(tiny(tmp_path, batch_size=16), resume=first.run_dir)
    with pytest.raises(ConfigError, match=r"run folder .* exists; continue it with --resume"):
        train(tiny(tmp_path, name="first"))


def test_unknown_attention_layer_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"not an AN layer.*layer1\.0\.bn1"):
        train(tiny(tmp_path, attention_layer="layer1.0.bn2"))


def test_class_mean_attention_averages_per_class():
    model = create_model("resnet20_an", num_classes=3).eval()
    layer = an_layer_names(model)[0]
    images = torch.randn(6, 3, 8, 8)
    target = torch.tensor([0, 2, 1, 1, 2, 2])
    captured = []
    hook = model.get_submodule(layer).attention.register_forward_hook(lambda m, a, out: captured.append(out))
    with torch.no_grad():
        model(images)
    hook.remove()
    expected = torch.stack([captured[0][target == c].mean(0) for c in range(3)])
    batches = [(images[:4], target[:4], []), (images[4:], target[4:], [])]
    weights = class_mean_attention(model, batches, layer, 3, torch.device("cpu"))
    assert weights.shape == (3, 5) and torch.allclose(weights, expected, atol=1e-6)


def test_flags_given_on_resume_apply(tmp_path):
    first = train(tiny(tmp_path, name="run", epochs=1))
    changed = {"lr": 0.8, "min_lr": 0.01, "warmup_epochs": 0.5, "weight_decay": 0.1, "momentum": 0.5}
    train(tiny(tmp_path, name="run", nesterov=True, **changed), resume=first.run_dir)
    saved = safe_torch_load(first.run_dir / "checkpoint_last.pt")
    group = saved["optimizer"]["param_groups"][0]
    assert (group["weight_decay"], group["momentum"], group["nesterov"]) == (0.1, 0.5, True)
    schedule = saved["scheduler"]
    assert schedule["peak_lr"] == pytest.approx(0.8 * 32 / 256) and schedule["min_lr"] == 0.01
    assert (schedule["warmup_steps"], schedule["total_steps"]) == (1, 4)


def test_resuming_an_earlier_checkpoint_of_a_folder_is_refused(tmp_path):
    early = train(tiny(tmp_path, name="early", epochs=1))
    later = train(tiny(tmp_path, name="later"))
    branch = later.run_dir / "early.pt"
    branch.write_bytes((early.run_dir / "checkpoint_last.pt").read_bytes())
    last = (later.run_dir / "checkpoint_last.pt").read_bytes()
    summary = (later.run_dir / "summary.csv").read_text()
    with pytest.raises(ConfigError, match=r"early\.pt is at step 2, but .*checkpoint_last\.pt is at step 4"):
        train(tiny(tmp_path, name="later"), resume=branch)
    assert (later.run_dir / "checkpoint_last.pt").read_bytes() == last
    assert (later.run_dir / "summary.csv").read_text() == summary


def test_fp16_may_be_switched_on_when_resuming(tmp_path):
    first = train(tiny(tmp_path, name="run", epochs=1))
    result = train(tiny(tmp_path, name="run", amp="fp16"), resume=first.run_dir)
    assert len(result.history) == 2
    assert safe_torch_load(first.run_dir / "checkpoint_last.pt")["scaler"]  # the scaler's state now


def test_pretrained_weights_start_a_new_run(tmp_path):
    source = train(tiny(tmp_path, name="source", epochs=1))
    start = safe_torch_load(source.run_dir / "checkpoint_last.pt")["model"]
    # lr and decay so small that the weights after two steps are the loaded ones
    fine = train(
        tiny(tmp_path, name="fine", epochs=1, lr=1e-12, pretrained=str(source.run_dir / "checkpoint_last.pt"))
    )
    tuned = safe_torch_load(fine.run_dir / "checkpoint_last.pt")["model"]
    torch.testing.assert_close(tuned["conv1.weight"], start["conv1.weight"], rtol=0, atol=1e-9)
    torch.testing.assert_close(tuned["fc.weight"], start["fc.weight"], rtol=0, atol=1e-9)
    fresh = train(tiny(tmp_path, name="fresh", epochs=1, lr=1e-12))
    scratch = safe_torch_load(fresh.run_dir / "checkpoint_last.pt")["model"]
    assert not torch.allclose(scratch["conv1.weight"], start["conv1.weight"])


def test_ctrl_c_says_what_is_kept_and_how_to_continue(tmp_path, monkeypatch, capsys):
    from attentive_norm.engine import faults

    def interrupt(point, rank=0):
        if point == "step:3":
            raise KeyboardInterrupt

    monkeypatch.setattr(faults, "kill_at", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path, name="run"))
    out = capsys.readouterr().out
    run = tmp_path / "run"
    assert f"interrupted: the last good checkpoint (step 2) is kept; continue with --resume {run}" in out
    assert safe_torch_load(run / "checkpoint_last.pt")["step"] == 2
