"""The benchmark produces complete, well-formed results and files, and computes its ratios right.
(No timing thresholds: timings depend on the machine and its load.)"""

from __future__ import annotations

import csv
import json

import pytest
import torch

from attentive_norm import __version__
from attentive_norm.benchmarks.common import (
    Settings,
    add_paired_ratios,
    add_ratios,
    format_markdown,
    format_table,
    interleaved_times,
    median_interval,
    peak_memory_bytes,
    summarise_times,
)
from attentive_norm.benchmarks.layer import PASSES, benchmark_layers, layer_shapes
from attentive_norm.benchmarks.network import RATIO_KEYS, benchmark_networks, build_model, unique_labels
from attentive_norm.cli.main import main
from attentive_norm.layers import native
from attentive_norm.models.flops import count_params

TINY = Settings(batch_size=2, image_size=32, threads=1, warmup=0, iterations=2)


def test_ratios_are_to_the_baseline_row() -> None:
    rows = [{"t": 2.0, "m": 10.0}, {"t": 3.0, "m": 5.0}, {"t": None, "m": 0.0}]
    add_ratios(rows, ["t", "m"])
    assert [r["t_ratio"] for r in rows] == [1.0, 1.5, None]
    assert [r["m_ratio"] for r in rows] == [1.0, 0.5, 0.0]
    add_ratios(rows, ["m"], baseline=1)
    assert [r["m_ratio"] for r in rows] == [2.0, 1.0, 0.0]
    zero = [{"t": 0.0}, {"t": 1.0}]
    add_ratios(zero, ["t"])
    assert zero[1]["t_ratio"] is None  # no ratio to a zero baseline


def test_paired_ratios_are_medians_of_per_round_ratios() -> None:
    rows = [{"t_times_ms": [1.0, 2.0, 10.0]}, {"t_times_ms": [1.1, 2.4, 10.0]}, {"t_times_ms": [1.0]}]
    add_paired_ratios(rows, ["t_times_ms"])
    assert rows[0]["t_paired_ratio"] == 1.0
    assert rows[1]["t_paired_ratio"] == pytest.approx(1.1)  # median of 1.1, 1.2, 1.0
    assert rows[2]["t_paired_ratio"] is None  # rounds do not match


def test_median_interval_matches_the_binomial_tables() -> None:
    # 95% order-statistic intervals for the median (e.g. Conover, Practical Nonparametric Statistics).
    assert median_interval(list(range(1, 6))) is None  # 5 values cannot give 95%
    assert median_interval(list(range(1, 7))) == (1, 6)
    assert median_interval(list(range(1, 11))) == (2, 9)
    assert median_interval(list(range(1, 21))) == (6, 15)
    assert median_interval(list(range(1, 31))) == (10, 21)
    assert median_interval([5, 1, 4, 2, 3, 6, 9, 8, 7, 10]) == (2, 9)  # order of the values is irrelevant


def test_paired_ratio_interval_brackets_the_median() -> None:
    reference = [10.0] * 12
    values = [10.0 * (1 + 0.01 * i) for i in range(12)]
    rows = [{"t_times_ms": reference}, {"t_times_ms": values}]
    add_paired_ratios(rows, ["t_times_ms"])
    row = rows[1]
    assert row["t_paired_low"] == pytest.approx(1.02) and row["t_paired_high"] == pytest.approx(1.09)
    assert row["t_paired_low"] <= row["t_paired_ratio"] <= row["t_paired_high"]
    assert row["t_paired_interval"] == "1.020-1.090"
    assert rows[0]["t_paired_interval"] == "1.000-1.000"


def test_repeated_models_are_labelled_apart() -> None:
    assert unique_labels(["a", "b", "a", "a"]) == ["a", "b", "a#2", "a#3"]


def test_interleaved_times_runs_each_candidate_round_robin() -> None:
    calls: list[str] = []
    times = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 1, 3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then order reversed every round
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    summary = summarise_times([0.003, 0.001, 0.002])
    assert summary == pytest.approx({"median_ms": 2.0, "min_ms": 1.0, "max_ms": 3.0})


def test_peak_memory_counts_what_the_call_allocates() -> None:
    def step() -> None:
        a = torch.ones(1_000_000)  # 4 MB
        b = torch.ones(1_000_000)  # 8 MB live
        del a, b
        torch.ones(500_000)  # then 2 MB

    peak = peak_memory_bytes(step)
    assert 8_000_000 <= peak < 8_100_000


def test_tables() -> None:
    rows = [{"name": "x", "v": 1.5}, {"name": "longer", "v": None}]
    columns = [("name", "model", "{}"), ("v", "value", "{:.2f}")]
    text = format_table(rows, columns).splitlines()
    assert text[0].split() == ["model", "value"] and text[2].split() == ["x", "1.50"]
    assert text[3].split() == ["longer", "-"]
    assert format_markdown(rows, columns).splitlines()[2] == "| x | 1.50 |"


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="dtype"):
        Settings(dtype="float16")
    with pytest.raises(ValueError, match="iterations"):
        Settings(iterations=0)


def test_build_model_from_the_zoo_and_timm() -> None:
    assert count_params(build_model("resnet20", 10)) == count_params(build_model("resnet20", 10))
    assert type(build_model("timm:resnet18", 10)).__module__.startswith("timm")
    with pytest.raises(ValueError, match="unknown model"):
        build_model("no_such_model")


def test_network_benchmark_rows() -> None:
    result = benchmark_networks(["resnet20", "resnet20_an"], TINY)
    assert result["kind"] == "network" and result["machine"]["torch_threads"] == 1
    assert result["machine"]["settings"]["batch_size"] == 2
    assert result["machine"]["attentive_norm"].startswith(__version__)  # + the git commit in a checkout
    baseline, an = result["rows"]
    assert baseline["model"] == "resnet20" and an["model"] == "resnet20_an"
    assert an["params"] == count_params(build_model("resnet20_an"))
    for key in RATIO_KEYS:
        assert baseline[f"{key}_ratio"] == 1.0
        assert an[f"{key}_ratio"] == pytest.approx(an[key] / baseline[key])
    for key in ("train", "infer"):
        per_round = [a / b for a, b in zip(an[f"{key}_times_ms"], baseline[f"{key}_times_ms"])]
        assert an[f"{key}_paired_ratio"] == pytest.approx(sum(per_round) / 2)  # median of two
        assert baseline[f"{key}_paired_ratio"] == 1.0
    for row in result["rows"]:
        assert len(row["train_times_ms"]) == len(row["infer_times_ms"]) == 2
        assert row["train_ms"] > 0 and row["infer_ms"] > 0 and row["train_peak_mb"] > row["state_mb"] > 0
        assert row["train_images_per_s"] == pytest.approx(2 / (row["train_ms"] / 1e3))
    assert an["params"] > baseline["params"] and an["flops"] > baseline["flops"]


def test_network_benchmark_a_a_control() -> None:
    settings = Settings(batch_size=2, image_size=32, threads=1, warmup=0, iterations=6)
    rows = benchmark_networks(["resnet20", "resnet20"], settings, measure_memory=False)["rows"]
    assert [r["model"] for r in rows] == ["resnet20", "resnet20#2"]
    control = rows[1]
    for key in ("train", "infer"):
        assert len(control[f"{key}_times_ms"]) == 6
        assert control[f"{key}_paired_low"] <= control[f"{key}_paired_ratio"] <= control[f"{key}_paired_high"]
        assert rows[0][f"{key}_paired_interval"] == "1.000-1.000"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_layer_benchmark_rows(dtype: str) -> None:
    # bf16 autocast also with channels_last inputs.
    settings = Settings(
        batch_size=2,
        image_size=64,
        threads=1,
        warmup=0,
        iterations=1,
        dtype=dtype,
        channels_last=dtype == "bfloat16",
    )
    shapes = layer_shapes(2, 64)
    assert [s[1] for s in shapes] == [64, 128, 256, 512] and [s[2] for s in shapes] == [16, 8, 4, 2]
    result = benchmark_layers(settings, shapes=shapes[2:])
    rows = result["rows"]
    assert [(r["shape"], r["pass"]) for r in rows] == [
        (f"2×{c}×{h}×{w}, K={k}", p) for _, c, h, w, k in shapes[2:] for p in PASSES
    ]
    for row in rows:
        for name in ("batchnorm", "an", "composite", "reference"):
            assert row[f"{name}_ms"] > 0 and len(row[f"{name}_times_ms"]) == 1
        # One round: the paired ratio is the ratio of the two times.
        assert row["an_over_batchnorm"] == pytest.approx(row["an_ms"] / row["batchnorm_ms"])
        assert row["reference_over_an"] == pytest.approx(row["reference_ms"] / row["an_ms"])
        # ResNet-50-AN has 6 AN layers of 256 channels and 3 of 512.
        blocks = {256: 6, 512: 3}[int(row["shape"].split("×")[1])]
        assert row["added_ms"] == pytest.approx(blocks * (row["an_ms"] - row["batchnorm_ms"]))
    for which in PASSES:
        expected = sum(r["added_ms"] for r in rows if r["pass"] == which)
        assert result["added_per_network_ms"][which] == pytest.approx(expected)


def test_cli_writes_json_csv_markdown_and_png(tmp_path, capsys) -> None:
    out = tmp_path / "bench"
    assert main(["benchmark", "--quick", "--threads", "1", "--output", str(out), "--name", "net"]) == 0
    printed = capsys.readouterr().out
    assert "resnet20_an" in printed and "attentive-norm benchmark --models resnet20,resnet20_an" in printed
    result = json.loads((out / "net.json").read_text())
    assert [r["model"] for r in result["rows"]] == ["resnet20", "resnet20_an"]
    assert result["command"].startswith("attentive-norm benchmark") and result["machine"]["cpu"]
    with open(out / "net.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["resnet20", "resnet20_an"] and float(rows[0]["train_ms_ratio"]) == 1
    assert "| resnet20_an |" in (out / "net.md").read_text()
    assert (out / "net.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    argv = ["benchmark", "--layer", "--quick", "--threads", "1", "--output", str(out), "--name", "layer"]
    assert main(argv) == 0
    assert "AN layers add to one ResNet-50 pass" in capsys.readouterr().out
    result = json.loads((out / "layer.json").read_text())
    assert result["kind"] == "layer" and len(result["rows"]) == 4 * len(PASSES)
    assert result["machine"]["inference_route"] == native.native_status()
    with open(out / "layer.csv") as f:
        assert len(list(csv.DictReader(f))) == 4 * len(PASSES)
    assert (out / "layer.png").stat().st_size > 0 and "AN / BN" in (out / "layer.md").read_text()


def test_cli_reports_unknown_models(tmp_path, capsys) -> None:
    argv = ["benchmark", "--quick", "--models", "resnet20,nope", "--output", str(tmp_path)]
    assert main(argv) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--quick", "--batch-size", "0"], "--quick sets the sizes itself: drop --batch-size or --quick"),
        (
            ["--layer", "--models", "resnet20"],
            "--layer measures one layer at ResNet-50's shapes, not --models",
        ),
        (["--batch-size", "0"], "batch_size must be >= 1, got 0"),
    ],
)
def test_cli_refuses_contradictory_or_bad_settings(tmp_path, capsys, argv, message) -> None:
    assert main(["benchmark", *argv, "--output", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_an_output_it_cannot_write_before_measuring(tmp_path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["benchmark", "--quick", "--output", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert "cannot write the results under" in err and "Traceback" not in err
    argv = ["benchmark", "--quick", "--threads", "1", "--output", str(tmp_path), "--name", "sub/dir/x"]
    assert main(argv) == 0 and (tmp_path / "sub" / "dir" / "x.json").is_file()


def test_cli_names_a_model_that_cannot_take_the_input_size(tmp_path, capsys) -> None:
    models = "resnet20,timm:vit_tiny_patch16_224"
    sizes = ["--image-size", "32", "--batch-size", "2", "--iterations", "1", "--warmup", "0"]
    assert main(["benchmark", "--models", models, *sizes, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "timm:vit_tiny_patch16_224 cannot run on 32x32 images" in err and "Traceback" not in err


def test_compiled_runs_record_that_the_layers_are_plain_ops() -> None:
    from attentive_norm.benchmarks.common import Settings, machine_info

    assert machine_info(Settings(compile=True))["inference_route"] == "pytorch (torch.compile: plain ops)"
    assert machine_info(Settings())["inference_route"] == native.native_status()


def test_the_chart_leaves_out_what_was_not_measured() -> None:
    from attentive_norm.benchmarks.common import plotted_metrics
    from attentive_norm.benchmarks.network import PLOT_METRICS

    rows = [{"train_paired_ratio": 1.0, "train_peak_mb_ratio": None}, {"train_paired_ratio": 1.1}]
    assert plotted_metrics(rows, PLOT_METRICS) == [("train_paired", "training step")]
