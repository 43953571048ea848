"""Configuration: layering, key and type checks, and the presets against the paper's recipes."""

import pytest
import yaml

from attentive_norm.engine.config import (
    ConfigError,
    TrainConfig,
    dump_yaml,
    make_config,
    preset_names,
    read_yaml_config,
)
from attentive_norm.models import list_models


def test_later_layers_win_and_defaults_fill_the_rest():
    cfg = make_config({"epochs": 3, "lr": 0.1}, {"epochs": 5})
    assert cfg.epochs == 5 and cfg.lr == 0.1 and cfg.model == TrainConfig().model


def test_unknown_key_names_the_key_and_the_closest_valid_one():
    with pytest.raises(ConfigError, match=r"unknown key 'learning_rate'.*") as info:
        make_config({"learning_rate": 0.1}, source="my.yaml")
    assert "my.yaml" in str(info.value)
    with pytest.raises(ConfigError, match=r"did you mean 'epochs'"):
        make_config({"epoch": 3})


@pytest.mark.parametrize(
    ("key", "value"),
    [("epochs", "ten"), ("epochs", 2.5), ("channels_last", "yes"), ("model_kwargs", [1]), ("epochs", True)],
)
def test_wrong_types_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        make_config({key: value})


def test_ints_and_yaml_exponent_strings_are_accepted_as_floats():
    cfg = make_config({"lr": 1, "weight_decay": "1e-4"})
    assert cfg.lr == 1.0 and cfg.weight_decay == 1e-4


@pytest.mark.parametrize(
    ("key", "value"), [("amp", "fp8"), ("epochs", 0), ("ema_decay", 1.0), ("label_smoothing", 1)]
)
def test_bad_values_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        make_config({key: value})


def test_yaml_file_errors_are_clear(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_yaml_config(str(tmp_path / "list.yaml"))
    (tmp_path / "typo.yaml").write_text("epochs: 2\nmixup: 0.2\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key 'mixup'.*mixup_alpha"):
        read_yaml_config(str(tmp_path / "typo.yaml"))
    with pytest.raises(ConfigError, match=r"neither a file nor a preset.*resnet50_an"):
        read_yaml_config("no_such_recipe")


def test_resolved_yaml_round_trips(tmp_path):
    cfg = make_config({"model_kwargs": {"placement": "bn12"}, "weight_decay": 4e-5, "clip_grad": 1.0})
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg, "a header"))
    assert path.read_text().startswith("# a header\n")
    assert make_config(read_yaml_config(str(path))) == cfg


# The paper's recipes: epochs, global batch, peak LR, weight decay, label smoothing, mixup.
PAPER = {
    "resnet50": (120, 1024, 0.4, 1e-4, 0.0, 0.0),
    "resnet50_an": (120, 1024, 0.4, 1e-4, 0.0, 0.0),
    "resnet101_an": (120, 1024, 0.4, 1e-4, 0.0, 0.0),
    "mobilenetv2_an": (150, 1024, 0.2, 4e-5, 0.0, 0.0),
    "aognet12m_an": (120, 2048, 0.8, 1e-4, 0.0, 0.0),
    "aognet40m_an": (120, 1024, 0.4, 1e-4, 0.0, 0.0),
    "resnet50d_an_advanced": (200, 1024, 0.4, 1e-4, 0.1, 0.2),
    "resnet101d_an_advanced": (200, 1024, 0.4, 1e-4, 0.1, 0.2),
    "aognet12m_an_advanced": (200, 2048, 0.8, 1e-4, 0.1, 0.2),
    "aognet40m_an_advanced": (200, 1024, 0.4, 1e-4, 0.1, 0.2),
}


@pytest.mark.parametrize("preset", sorted(PAPER))
def test_presets_reproduce_the_paper_recipes(preset):
    cfg = make_config(read_yaml_config(preset))
    epochs, batch, peak, wd, smoothing, mixup = PAPER[preset]
    assert (cfg.epochs, cfg.batch_size, cfg.weight_decay) == (epochs, batch, wd)
    assert cfg.peak_lr() == pytest.approx(peak)
    assert (cfg.label_smoothing, cfg.mixup_alpha) == (smoothing, mixup)
    assert (cfg.warmup_epochs, cfg.momentum, cfg.nesterov, cfg.min_lr) == (5, 0.9, False, 0.0)
    assert cfg.decay_norm_bias  # the paper decays every parameter
    assert (cfg.image_size, cfg.eval_resize, cfg.interpolation) == (224, 256, "bilinear")


def test_every_preset_loads_and_names_a_registered_model():
    names = preset_names()
    assert len(names) >= 19 and set(PAPER) <= set(names)
    models = set(list_models())
    for name in names:
        cfg = make_config(read_yaml_config(name))
        assert cfg.model in models, name
        # BN baselines share their AN counterpart's recipe
        twin = (
            name.replace(cfg.model, cfg.model + "_an", 1) if not cfg.model.endswith(("_an", "_se")) else None
        )
        if twin in names:
            assert {**yaml.safe_load(open_preset(twin)), "model": cfg.model} == yaml.safe_load(
                open_preset(name)
            )


def open_preset(name):
    from importlib import resources

    return (resources.files("attentive_norm") / "configs" / f"{name}.yaml").read_text()
