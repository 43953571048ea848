"""``attentive-norm train / validate / compare`` end to end (in-process), and their error messages."""

import csv
import json

import pytest
import torch
import yaml
from PIL import Image

from attentive_norm.checkpoint.testing import official_state_from_model, write_official_checkpoint
from attentive_norm.cli.main import main
from attentive_norm.data import folder
from attentive_norm.models import create_model

TINY = ["--subset", "64", "--batch-size", "32", "--image-size", "12", "--threads", "1", "--no-progress"]


def image_folder(root, classes=("circle", "square"), per_class=12):
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (16, 16), (120 * c + 5 * i, 60, 90)).save(root / split / name / f"{i}.png")
    return root


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "/no/such/folder"], "data folder /no/such/folder does not exist"),
        (["--epochs", "0"], "epochs=0 is out of range"),
        (["--config", "no_such_recipe"], "neither a file nor a preset"),
        (["--config", "resnet50_an"], "meant for ImageNet-size data, not the bundled digits: give --data"),
        (["--resume", "/no/such/run"], "no checkpoint at /no/such/run"),
        (["--model", "resnet21_an"], "did you mean resnet20_an"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, tmp_path, argv, message):
    code, _, err = run_cli(capsys, "train", *TINY, "--output", tmp_path, *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_unknown_config_key_in_a_file(capsys, tmp_path):
    (tmp_path / "mine.yaml").write_text("epochs: 1\nweight_decy: 0.0001\n")
    code, _, err = run_cli(capsys, "train", "--config", tmp_path / "mine.yaml")
    assert code == 2 and "unknown key 'weight_decy' (did you mean 'weight_decay'?)" in err


def test_flags_override_the_config_file(tmp_path):
    from attentive_norm.cli.main import build_parser
    from attentive_norm.cli.train import resolve_config

    (tmp_path / "mine.yaml").write_text("epochs: 7\nlr: 0.3\nclip_grad: 2.0\n")
    flags = [
        "--lr",
        "0.5",
        "--clip-grad",
        "none",
        "--model-kwargs",
        "{placement: bn12}",
        "--no-decay-norm-bias",
    ]
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "mine.yaml"), *flags])
    cfg = resolve_config(args)
    assert (cfg.epochs, cfg.lr, cfg.clip_grad) == (7, 0.5, None)
    assert cfg.model_kwargs == {"placement": "bn12"} and cfg.decay_norm_bias is False


@pytest.mark.slow
def test_train_then_validate_on_an_image_folder_with_a_broken_image(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(folder, "VERIFY_UP_TO", 0)  # as for a large dataset: met while loading
    data = image_folder(tmp_path / "data")
    (data / "train" / "circle" / "broken.png").write_bytes(b"not an image")
    argv = ["train", *TINY, "--data", data, "--output", tmp_path / "runs", "--name", "shapes"]
    code, out, err = run_cli(capsys, *argv, "--epochs", "1", "--batch-size", "8")
    assert code == 0, err
    assert "skipped an unreadable image" in out and "broken.png" in out
    run = tmp_path / "runs" / "shapes"
    rows = list(csv.DictReader((run / "summary.csv").read_text().splitlines()))
    assert int(rows[0]["skipped"]) == 1

    code, out, err = run_cli(capsys, "validate", "--checkpoint", run)
    assert code == 0, err
    results = json.loads((run / "validate-checkpoint_last.json").read_text())
    assert results["model"] == "resnet20_an" and results["images"] == 24 and 0 <= results["top1"] <= 100
    assert (run / "validate-checkpoint_last.csv").is_file() and "top-1" in out

    code, _, err = run_cli(
        capsys, "validate", "--checkpoint", run / "checkpoint_best.pt", "--model", "resnet20"
    )
    assert code == 2 and "does not fit" in err and "Traceback" not in err


def test_validate_the_authors_checkpoint_format(capsys, tmp_path):
    data = image_folder(tmp_path / "data", per_class=3)
    model = create_model("resnet20_an", num_classes=2)
    state, masters = official_state_from_model(model)
    write_official_checkpoint(state, masters, tmp_path / "model_best.pth.tar", arch="resnet20_an")
    code, _, err = run_cli(
        capsys, "validate", "--checkpoint", tmp_path / "model_best.pth.tar", "--data", data
    )
    assert code == 2 and "pass --model" in err
    output = tmp_path / "results"
    argv = ["--checkpoint", tmp_path / "model_best.pth.tar", "--data", data, "--model", "resnet20_an"]
    code, _, err = run_cli(capsys, "validate", *argv, "--image-size", "16", "--output", output)
    assert code == 0, err
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["checkpoint_format"] == "official" and results["images"] == 6
    assert (results["image_size"], results["eval_resize"]) == (16, 256)


def test_validate_a_safetensors_weight_file_that_names_its_model(capsys, tmp_path):
    from attentive_norm.checkpoint import save_weights

    data = image_folder(tmp_path / "data", per_class=3)
    model = create_model("resnet20_an", num_classes=2, placement="bn12")
    metadata = {"model": "resnet20_an", "num_classes": 2, "model_kwargs": '{"placement": "bn12"}'}
    save_weights(model, tmp_path / "w.safetensors", metadata=metadata)
    argv = ["--checkpoint", tmp_path / "w.safetensors", "--data", data, "--image-size", "16"]
    code, _, err = run_cli(capsys, "validate", *argv, "--output", tmp_path / "res")
    assert code == 0, err
    assert json.loads((tmp_path / "res.json").read_text())["checkpoint_format"] == "safetensors"


@pytest.mark.slow
def test_compare_reports_mean_and_spread_per_model(capsys, tmp_path):
    argv = ["compare", "--models", "resnet20,resnet20_an", "--seeds", "0,1", *TINY, "--epochs", "1"]
    code, out, err = run_cli(capsys, *argv, "--output", tmp_path, "--name", "cmp")
    assert code == 0, err
    table = out[out.index("model  ") :]
    assert "resnet20 " in table and "resnet20_an" in table and "±" in table
    summary = list(csv.DictReader((tmp_path / "cmp" / "compare.csv").read_text().splitlines()))
    assert [r["model"] for r in summary] == ["resnet20", "resnet20_an"] and summary[0]["runs"] == "2"
    assert (tmp_path / "cmp" / "compare.png").is_file()
    assert (tmp_path / "cmp" / "resnet20_an-seed1" / "checkpoint_last.pt").is_file()
    for seed in (0, 1):  # --subset: the same images for every seed, drawn with the first
        config = yaml.safe_load((tmp_path / "cmp" / f"resnet20-seed{seed}" / "config.yaml").read_text())
        assert (config["seed"], config["subset_seed"]) == (seed, 0)


def test_the_subset_depends_on_its_seed_only():
    from attentive_norm.data.loader import build_loaders
    from attentive_norm.engine.config import make_config

    def picked(**settings):
        cfg = make_config({"subset": 40, "batch_size": 8, "image_size": 8, **settings})
        return build_loaders(cfg, 1, 0, 1, pin_memory=False).train.dataset.indices

    assert picked(seed=1, subset_seed=0) == picked(seed=2, subset_seed=0) == picked(seed=0)
    assert picked(seed=1) != picked(seed=2)


def test_compare_refuses_unknown_models_before_training(capsys):
    code, _, err = run_cli(capsys, "compare", "--models", "resnet20,resnet20_ann")
    assert code == 2 and "unknown model 'resnet20_ann'" in err


def test_a_moved_data_folder_resumes_if_its_classes_are_the_same(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image_folder(tmp_path / "images")
    code, _, err = run_cli(
        capsys, "train", *TINY, "--batch-size", "8", "--epochs", "1", "--data", "images", "--name", "r"
    )
    assert code == 0, err
    recorded = (tmp_path / "runs" / "r" / "config.yaml").read_text()
    assert f"data: {tmp_path / 'images'}" in recorded  # absolute: works from any folder
    (tmp_path / "images").rename(tmp_path / "moved")
    code, out, err = run_cli(capsys, "train", "--resume", "runs/r", "--epochs", "2", "--data", "moved")
    assert code == 0, err
    assert f"data: {tmp_path / 'moved'} (trained so far on {tmp_path / 'images'}; same classes)" in out
    image_folder(tmp_path / "other", classes=("circle", "star"))
    code, _, err = run_cli(capsys, "train", "--resume", "runs/r", "--epochs", "3", "--data", "other")
    assert code == 2 and "its 2 classes are not the 2 the run was trained on" in err


def test_interrupted_training_exits_130_without_a_traceback(capsys, tmp_path, monkeypatch):
    from attentive_norm.engine import faults

    def interrupt(point, rank=0):
        raise KeyboardInterrupt

    monkeypatch.setattr(faults, "kill_at", interrupt)
    code, out, err = run_cli(capsys, "train", *TINY, "--output", tmp_path, "--name", "r")
    assert code == 130 and "interrupted: no checkpoint was written yet" in out and "Traceback" not in err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--image-size", "-5", "must be >= 1, got -5"),
        ("--eval-resize", "0", "must be >= 1, got 0"),
        ("--batch-size", "0", "must be >= 1, got 0"),
        ("--workers", "-1", "must be >= 0, got -1"),
        ("--batch-size", "ten", "expected an integer, got 'ten'"),
    ],
)
def test_validate_refuses_bad_numbers_in_one_line(capsys, tmp_path, flag, value, message):
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "--checkpoint", str(tmp_path), flag, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["train", "validate"])
def test_cuda_without_a_gpu_is_one_line(capsys, tmp_path, command):
    argv = [command, "--device", "cuda"] + (["--checkpoint", str(tmp_path)] if command == "validate" else [])
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "no CUDA device is available" in err and "Traceback" not in err


@pytest.mark.slow
def test_validate_keeps_earlier_results_and_checks_the_classes(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "train", *TINY, "--epochs", "1", "--name", "digits")
    assert code == 0, err
    run = tmp_path / "runs" / "digits"
    for expected in ("validate-checkpoint_last", "validate-checkpoint_last-2"):
        code, out, err = run_cli(capsys, "validate", "--checkpoint", run)
        assert code == 0, err
        assert f"results: {run / expected}.json" in out and (run / f"{expected}.json").is_file()
    # a digits model (classes '0'..'9') scored on folders of other classes would be meaningless
    shapes = image_folder(tmp_path / "shapes")
    code, _, err = run_cli(capsys, "validate", "--checkpoint", run, "--data", shapes)
    assert code == 2 and "class folders not in the training set: circle, square" in err


def test_resuming_the_authors_file_says_it_is_not_a_training_checkpoint(capsys, tmp_path):
    path = tmp_path / "model_best.pth.tar"
    write_official_checkpoint(*official_state_from_model(create_model("resnet20_an")), path)
    code, _, err = run_cli(capsys, "train", "--resume", path)
    assert code == 2 and "is not a training checkpoint" in err and "--pretrained FILE" in err


def test_print_config_shows_the_resolved_settings_and_trains_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run would create ./runs
    code, out, err = run_cli(
        capsys, "train", "--config", "resnet50_an", "--data", tmp_path, "--lr", "0.2", "--print-config"
    )
    assert code == 0, err
    settings = yaml.safe_load(out)
    assert (settings["model"], settings["lr"], settings["epochs"], settings["batch_size"]) == (
        "resnet50_an",
        0.2,
        120,
        1024,
    )
    assert "# peak LR 0.8 (lr x batch_size / 256)" in out and not (tmp_path / "runs").exists()
