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
    assert set(json.loads((out / "metrics.json").read_text())) == {"box", "mask"}
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
    with caplog.at_level("WARNING"):
        metrics = train(load_config(None, _tiny(tmp_path, "b", "solver.epochs=1")))
    assert set(metrics) == {"box", "mask"}
    assert images[0].name in caplog.text
    assert "epoch 1: 1 unreadable image(s) skipped" in caplog.text
