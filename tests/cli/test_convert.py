"""``attentive-norm convert``: the authors' and our checkpoints to validated safetensors weight files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attentive_norm.checkpoint import load_checkpoint, load_weights
from attentive_norm.checkpoint.testing import (
    official_state_from_model,
    randomize_state,
    write_official_checkpoint,
)
from attentive_norm.cli.main import main
from attentive_norm.models import create_model

MODEL = "resnet20_an"  # small (CIFAR) AN ResNet: fast to build


@pytest.fixture
def source() -> torch.nn.Module:
    model = create_model(MODEL, num_classes=10)
    randomize_state(model)
    return model.eval()


def test_authors_file_to_safetensors(source: torch.nn.Module, tmp_path: Path, capsys) -> None:
    src, dst = tmp_path / "model_best.pth.tar", tmp_path / "out.safetensors"
    write_official_checkpoint(*official_state_from_model(source), src, arch="resnet")
    assert main(["convert", str(src), str(dst), "--model", MODEL, "--num-classes", "10"]) == 0
    assert "fp32 master weights used" in capsys.readouterr().out
    tensors, meta = load_weights(dst)
    assert meta["model"] == MODEL and meta["num_classes"] == "10" and meta["format_version"] == "1"
    assert meta["source"] == "model_best.pth.tar (official)"
    parameters = dict(source.named_parameters())
    for key, value in parameters.items():
        assert torch.equal(tensors[key], value.detach()), key  # the exact fp32 masters

    model = create_model(MODEL, num_classes=10).eval()
    info = load_checkpoint(model, dst)
    assert info.source_format == "safetensors" and info.model_name == MODEL


def test_fp16_flag_keeps_stored_weights(source: torch.nn.Module, tmp_path: Path) -> None:
    src, dst = tmp_path / "model_best.pth.tar", tmp_path / "out.safetensors"
    write_official_checkpoint(*official_state_from_model(source), src)
    assert main(["convert", str(src), str(dst), "--model", MODEL, "--num-classes", "10", "--fp16"]) == 0
    tensors, _ = load_weights(dst)
    assert torch.equal(tensors["fc.weight"], source.fc.weight.detach().half().float())


def test_training_checkpoint_names_its_model(source: torch.nn.Module, tmp_path: Path, capsys) -> None:
    src, dst = tmp_path / "last.pth", tmp_path / "out.safetensors"
    args = {"model": MODEL, "num_classes": 10, "model_kwargs": {}}
    torch.save({"format": "attentive_norm.train", "args": args, "model": source.state_dict()}, src)
    assert main(["convert", str(src), str(dst)]) == 0
    tensors, meta = load_weights(dst)
    assert meta["model"] == MODEL and meta["num_classes"] == "10" and meta["source"] == "last.pth (training)"
    assert all(torch.equal(tensors[k], v) for k, v in source.state_dict().items())


def test_wrong_architecture_is_refused_and_nothing_written(
    source: torch.nn.Module, tmp_path: Path, capsys
) -> None:
    src, dst = tmp_path / "model_best.pth.tar", tmp_path / "out.safetensors"
    write_official_checkpoint(*official_state_from_model(source), src, arch="resnet20_an")
    assert main(["convert", str(src), str(dst), "--model", "resnet20", "--num-classes", "10"]) == 2
    err = capsys.readouterr().err
    assert "model_best.pth.tar" in err and "'resnet20_an'" in err and "bn1.weight_ [5, 16]" in err
    assert not dst.exists()


def test_other_num_classes_is_refused(source: torch.nn.Module, tmp_path: Path, capsys) -> None:
    src, dst = tmp_path / "model_best.pth.tar", tmp_path / "out.safetensors"
    write_official_checkpoint(*official_state_from_model(source), src)
    assert main(["convert", str(src), str(dst), "--model", MODEL]) == 2
    assert "fc.weight: file [10, 64] vs model [1000, 64]" in capsys.readouterr().err
    assert not dst.exists()


def test_damaged_source_is_named(source: torch.nn.Module, tmp_path: Path, capsys) -> None:
    src, dst = tmp_path / "model_best.pth.tar", tmp_path / "out.safetensors"
    write_official_checkpoint(*official_state_from_model(source), src)
    src.write_bytes(src.read_bytes()[:-1000])
    assert main(["convert", str(src), str(dst), "--model", MODEL, "--num-classes", "10"]) == 2
    assert "model_best.pth.tar" in capsys.readouterr().err
    assert not dst.exists()


def test_existing_destination_needs_force(source: torch.nn.Module, tmp_path: Path, capsys) -> None:
    src, dst = tmp_path / "w.safetensors", tmp_path / "out.safetensors"
    dst.write_bytes(b"keep me")
    from attentive_norm.checkpoint import save_weights

    save_weights(source, src, {"model": MODEL})
    assert main(["convert", str(src), str(dst)]) == 2
    assert "--force" in capsys.readouterr().err and dst.read_bytes() == b"keep me"
    assert main(["convert", str(src), str(dst), "--force"]) == 0
    assert load_weights(dst)[1]["model"] == MODEL


def test_authors_file_needs_model_name(source: torch.nn.Module, tmp_path: Path, capsys) -> None:
    src = tmp_path / "model_best.pth.tar"
    write_official_checkpoint(*official_state_from_model(source), src, arch="resnet")
    assert main(["convert", str(src), str(tmp_path / "o.safetensors")]) == 2
    assert "give --model" in capsys.readouterr().err


def test_unknown_model(source: torch.nn.Module, tmp_path: Path, capsys) -> None:
    src = tmp_path / "model_best.pth.tar"
    write_official_checkpoint(*official_state_from_model(source), src)
    assert main(["convert", str(src), str(tmp_path / "o.safetensors"), "--model", "resnet5O_an"]) == 2
    assert "unknown model 'resnet5O_an'" in capsys.readouterr().err


def test_a_folder_as_source_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["convert", str(tmp_path), str(tmp_path / "o.safetensors"), "--model", MODEL]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attentive-norm: error:") and "Is a directory" in err and "Traceback" not in err
