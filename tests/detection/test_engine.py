"""Detection runs: exact resume, ``detect eval`` from a checkpoint, bad data through the CLI, torchrun,
and the embedded default's learning signal."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attentive_norm.cli.main import main
from attentive_norm.detection.checkpointing import read_detection_checkpoint
from attentive_norm.detection.config import load_config
from attentive_norm.detection.engine import train

TINY = [
    "model.backbone=resnet20_an",
    "model.head_norm=an_gn",
    "model.an_mixtures=[2, 2, 3, 3]",
    "model.fpn_channels=32",
    "model.box_conv_channels=32",
    "model.box_fc_channels=64",
    "model.mask_channels=32",
    "model.out_indices=[2]",
    "model.frozen_stages=0",
    "model.norm_eval=false",
    "model.min_size=64",
    "model.max_size=64",
    "model.maskrcnn_kwargs={rpn_batch_size_per_image: 32, box_batch_size_per_image: 16, "
    "rpn_post_nms_top_n_train: 50, rpn_post_nms_top_n_test: 20, box_detections_per_img: 10}",
    "data.num_workers=0",
    "solver.batch_size=2",
    "solver.base_batch_size=2",
    "solver.epochs=2",
    "solver.milestones=[1]",
    "solver.warmup_iters=3",
    "device=cpu",
    "visualize=0",
]


def _as_flags(overrides: list[str]) -> list[str]:
    return [part for o in overrides for part in ("--set", o)]


def _tiny(tmp_path: Path, out: str, *extra: str) -> list[str]:
    shapes = [f"data.shapes.root={tmp_path / 'data'}", "data.shapes.num_train=8", "data.shapes.num_val=3"]
    return [*TINY, *shapes, f"output_dir={tmp_path / out}", *extra]


def test_resume_mid_epoch_repeats_the_uninterrupted_run_exactly(tmp_path: Path) -> None:
    straight = train(load_config(None, _tiny(tmp_path, "a")))
    assert set(straight) == {"box", "mask"}
    interrupted = load_config(None, _tiny(tmp_path, "b", "solver.max_iters=5", "checkpoint_interval=1"))
    train(interrupted)
    stopped = read_detection_checkpoint(tmp_path / "b" / "last.pth")
    assert (stopped["epoch"], stopped["batch"], stopped["iteration"]) == (1, 1, 5)
    resumed = train(load_config(None, _tiny(tmp_path, "b")), resume="auto")
    a = read_detection_checkpoint(tmp_path / "a" / "last.pth")
    b = read_detection_checkpoint(tmp_path / "b" / "last.pth")
    assert (a["epoch"], a["iteration"]) == (b["epoch"], b["iteration"]) == (2, 8)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert resumed == straight


def test_eval_cli_rebuilds_the_model_from_the_checkpoint(tmp_path: Path, capsys) -> None:
    train(load_config(None, _tiny(tmp_path, "run", "solver.epochs=1")))
    capsys.readouterr()
    out = tmp_path / "eval"
    checkpoint = str(tmp_path / "run" / "last.pth")
    code = main(["detect", "eval", "--checkpoint", checkpoint, "--output-dir", str(out), "--visualize", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "AP50" in printed and "box" in printed and "mask" in printed
    record = json.loads((out / "metrics.json").read_text())
    assert set(record) == {"box", "mask", "checkpoint", "val_images", "val_ann"}
    assert len(list((out / "vis").glob("*.png"))) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [("{}", "not a COCO instances annotation file"), ("[]", "expected a JSON object")],
)
def test_bad_annotation_file_is_a_one_line_error(tmp_path: Path, capsys, content: str, message: str) -> None:
    (tmp_path / "images").mkdir()
    ann = tmp_path / "ann.json"
    ann.write_text(content)
    args = ["detect", "train", "--train-images", str(tmp_path / "images"), "--train-ann", str(ann)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("attentive-norm: error:") and message in err and "Traceback" not in err


def test_missing_images_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    code = main(["detect", "train", *_as_flags(_tiny(tmp_path, "x")), "--epochs", "0"])
    assert code == 0
    for f in (tmp_path / "data" / "train").iterdir():
        f.unlink()
    args = ["detect", "train", "--train-images", str(tmp_path / "data" / "train")]
    args += ["--train-ann", str(tmp_path / "data" / "train.json")]
    assert main(args) == 2
    assert "no usable images" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    overrides = _tiny(tmp_path, "ddp", "solver.batch_size=1", "solver.epochs=1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "attentive_norm.cli.main", "detect", "train"]
    cmd += _as_flags(overrides)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout and "AP50" in done.stdout
    ckpt = read_detection_checkpoint(tmp_path / "ddp" / "last.pth")
    assert ckpt["iteration"] == 4 and len(ckpt["rng"]) == 2


@pytest.mark.slow
def test_embedded_default_learns(tmp_path: Path, monkeypatch, capsys) -> None:
    """``attentive-norm detect train`` with no arguments: shapes data, a short CPU run, a real box AP."""
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    assert main(["detect", "train"]) == 0
    seconds = time.perf_counter() - start
    printed = capsys.readouterr().out
    assert "AP50" in printed
    metrics = json.loads((tmp_path / "runs" / "detect-shapes" / "metrics.json").read_text())
    box, mask = metrics["box"]["AP"], metrics["mask"]["AP"]
    print(f"embedded default: box AP {box:.1f}, mask AP {mask:.1f}, {seconds:.0f} s")
    assert box > 10.0 and mask > 10.0
    assert len(list((tmp_path / "runs" / "detect-shapes" / "vis").glob("*.png"))) == 4


def test_an_unreadable_image_met_while_training_is_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train(load_config(None, _tiny(tmp_path, "a", "solver.epochs=0")))  # writes the shapes data
    images = sorted((tmp_path / "data" / "train").iterdir())
    images[0].write_bytes(b"not an image")
    with caplog.at_level("INFO"):
        metrics = train(load_config(None, _tiny(tmp_path, "b", "solver.epochs=1")))
    assert set(metrics) == {"box", "mask"}
    assert images[0].name in caplog.text
    assert "epoch 0 iter 1:" in caplog.text and "epoch 1" not in caplog.text  # one epoch, numbered 0
    assert "epoch 0: 1 unreadable image(s) skipped" in caplog.text


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder in which a one-epoch run was started with relative paths: ``data/`` (the shapes) and
    ``run/`` (``last.pth``, ``metrics.json``)."""
    root = tmp_path_factory.mktemp("started-here")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        shapes = ["data.shapes.root=data", "data.shapes.num_train=8", "data.shapes.num_val=3"]
        train(load_config(None, [*TINY, *shapes, "output_dir=run", "solver.epochs=1"]))
    finally:
        os.chdir(cwd)
    return root


def _val_flags(run: Path, val_ann: Path | None = None) -> list[str]:
    return ["--val-images", str(run / "data" / "val"), "--val-ann", str(val_ann or run / "data" / "val.json")]


def _train_flags(run: Path, train_ann: Path | None = None) -> list[str]:
    train = ["--train-images", str(run / "data" / "train")]
    return [*train, "--train-ann", str(train_ann or run / "data" / "train.json")]


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert err.startswith("attentive-norm: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_metrics_json_is_strict_json_with_null_where_there_is_no_ground_truth(run: Path) -> None:
    def refuse(constant: str) -> None:
        raise AssertionError(f"metrics.json holds {constant}, which is not JSON")

    metrics = json.loads((run / "run" / "metrics.json").read_text(), parse_constant=refuse)
    assert metrics["box"]["APl"] is None and metrics["mask"]["APl"] is None  # no large shapes
    assert isinstance(metrics["box"]["AP"], float)


def test_eval_writes_a_new_folder_and_names_the_data(run: Path, capsys: pytest.CaptureFixture) -> None:
    """``detect eval`` overwrote the training run's metrics.json and vis/; now every evaluation gets a new
    folder beside the checkpoint, and its metrics.json says what was evaluated."""
    folder = run / "run"
    trained = (folder / "metrics.json").read_text()
    before = set(folder.glob("eval-*"))
    args = ["detect", "eval", "--checkpoint", str(folder / "last.pth"), "--visualize", "1"]
    assert main(args) == 0 and main(args) == 0
    new = sorted(set(folder.glob("eval-*")) - before)
    assert [p.name for p in new] == [f"eval-{len(before) + 1}", f"eval-{len(before) + 2}"]
    assert (folder / "metrics.json").read_text() == trained and not (folder / "vis").exists()
    record = json.loads((new[0] / "metrics.json").read_text())
    assert record["checkpoint"] == str((folder / "last.pth").resolve())
    assert record["val_ann"] == str((run / "data" / "val.json").resolve())
    assert record["val_images"] == str((run / "data" / "val").resolve())
    assert len(list((new[0] / "vis").glob("*.png"))) == 1
    assert str(new[1] / "metrics.json") in capsys.readouterr().out


def test_paths_are_recorded_absolute_so_eval_works_from_any_folder(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    checkpoint = run / "run" / "last.pth"
    data = read_detection_checkpoint(checkpoint)
    config = data["config"]
    for key in ("train_images", "train_ann", "val_images", "val_ann"):
        assert Path(config["data"][key]).is_absolute(), key
    assert config["output_dir"] == str((run / "run").resolve())
    monkeypatch.chdir(tmp_path)
    assert main(["detect", "eval", "--checkpoint", str(checkpoint), "--output-dir", "a"]) == 0
    assert (tmp_path / "a" / "metrics.json").is_file()

    # A checkpoint of an older version, with relative paths: found while it sits in its run folder.
    config["data"].update(val_images="data/val", val_ann="data/val.json")
    config["output_dir"] = "run"
    torch.save(data, run / "run" / "old.pth")
    assert main(["detect", "eval", "--checkpoint", str(run / "run" / "old.pth"), "--output-dir", "b"]) == 0
    (tmp_path / "moved").mkdir()
    torch.save(data, tmp_path / "moved" / "old.pth")
    capsys.readouterr()
    assert main(["detect", "eval", "--checkpoint", "moved/old.pth", "--output-dir", "c"]) == 2
    assert "pass --val-images and --val-ann" in _one_line_error(capsys)
    args = ["detect", "eval", "--checkpoint", "moved/old.pth", "--output-dir", "c", *_val_flags(run)]
    assert main(args) == 0


def _renamed(run: Path, tmp_path: Path, split: str, **names: str) -> Path:
    data = json.loads((run / "data" / f"{split}.json").read_text())
    for category in data["categories"]:
        category["name"] = names.get(category["name"], category["name"])
    path = tmp_path / f"{split}.json"
    path.write_text(json.dumps(data))
    return path


def test_eval_and_resume_refuse_data_of_other_categories(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    checkpoint = run / "run" / "last.pth"
    data = read_detection_checkpoint(checkpoint)
    assert data["categories"] == [
        {"id": 1, "name": "circle"},
        {"id": 2, "name": "square"},
        {"id": 3, "name": "triangle"},
    ]
    val = _renamed(run, tmp_path, "val", triangle="hexagon")
    args = ["detect", "eval", "--checkpoint", str(checkpoint), "--output-dir", str(tmp_path / "e")]
    assert main([*args, *_val_flags(run, val)]) == 2
    err = _one_line_error(capsys)
    assert "label 3 is id 3 'triangle' in the checkpoint, id 3 'hexagon' in the data" in err
    assert str(val) in err and str(checkpoint) in err

    train_ann = _renamed(run, tmp_path, "train", triangle="hexagon")
    resume = [
        "detect",
        "train",
        *_as_flags([*TINY, f"output_dir={tmp_path / 'r'}"]),
        "--resume",
        str(checkpoint),
    ]
    assert main([*resume, *_train_flags(run, train_ann), *_val_flags(run, val)]) == 2
    assert "'hexagon' in the data" in _one_line_error(capsys)

    # A checkpoint written before categories were recorded: their number is checked.
    del data["categories"]
    torch.save(data, tmp_path / "old.pth")
    two = json.loads((run / "data" / "val.json").read_text())
    two["categories"] = two["categories"][:2]
    (tmp_path / "two.json").write_text(json.dumps(two))
    args = ["detect", "eval", "--checkpoint", str(tmp_path / "old.pth"), "--output-dir", str(tmp_path / "e")]
    assert main([*args, *_val_flags(run, tmp_path / "two.json")]) == 2
    assert "has 2 categories, but" in _one_line_error(capsys)
    assert main([*args, *_val_flags(run)]) == 0


def test_resuming_with_another_backbone_is_one_clear_line(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    checkpoint = run / "run" / "last.pth"
    args = [
        "detect",
        "train",
        *_as_flags([*TINY, f"output_dir={tmp_path / 'r'}"]),
        *_train_flags(run),
        *_val_flags(run),
    ]
    assert main([*args, "--backbone", "resnet20", "--resume", str(checkpoint)]) == 2
    err = _one_line_error(capsys)
    assert f"{checkpoint} does not fit the model these settings build" in err
    assert "model.backbone 'resnet20_an' in the checkpoint, 'resnet20' now" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device", "cuda"], "no CUDA device is available"),
        (["--set", "solver.batch_size=abc"], "config key solver.batch_size must be int, got 'abc'"),
        (
            ["--set", "model.maskrcnn_kwargs={box_detections_per_imgg: 5}"],
            "takes no 'box_detections_per_imgg'; did you mean 'box_detections_per_img'?",
        ),
    ],
    ids=["cuda", "type", "maskrcnn_kwargs"],
)
def test_setting_mistakes_are_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    extra: list[str],
    message: str,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["detect", "train", *_as_flags(_tiny(tmp_path, "x")), *extra]) == 2
    assert message in _one_line_error(capsys)
