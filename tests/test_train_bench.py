"""`sparseinst bench --train`: training iterations timed by phase, on a tiny model and dataset."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from cli_support import run_cli
from train_support import TINY, make_dataset

from sparseinst_cli.config import load_config, parse_overrides
from sparseinst_cli.data.datasets import resolve_split
from sparseinst_cli.training import speed as train_speed
from sparseinst_cli.training.speed import TrainBenchSettings, measure_training
from sparseinst_cli.training.step import Stepper


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("train_bench"))


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    """The demo model shrunk by TINY, as a config file (`bench` takes no overrides)."""
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump({"_base_": "demo", **parse_overrides(TINY)}))
    return path


def test_every_iteration_is_a_real_training_step_and_the_phases_add_up(
    data, tiny_config, monkeypatch
):
    steps = []
    real_step = Stepper.step

    def counted(self, iteration, images, targets, **kwargs):
        steps.append((iteration, len(images)))
        return real_step(self, iteration, images, targets, **kwargs)

    monkeypatch.setattr(train_speed.Stepper, "step", counted)
    cfg = load_config(tiny_config, ["model.num_classes=3"])
    settings = TrainBenchSettings(warmup=2, iters=5, batch=2, threads=1, workers=0)
    start = time.perf_counter()
    result = measure_training(cfg, resolve_split(str(data), "train"), variant="tiny",
                              settings=settings)
    elapsed_ms = (time.perf_counter() - start) * 1000
    assert steps == [(i, 2) for i in range(7)]  # warm-up + timed, batch 2
    assert result.batch == 2 and result.sizes == [64] and result.dtype == "fp32"
    phases = (result.data_ms, result.forward_ms, result.backward_ms)
    assert all(p.median > 0 for p in phases)
    # The step is the sum of its phases; five of them fit in the wall time of the whole call.
    assert sum(p.median for p in phases) == pytest.approx(result.step_ms.median, rel=0.5)
    assert 5 * result.step_ms.median < elapsed_ms
    assert result.images_per_s == pytest.approx(2000 / result.step_ms.median)
    assert result.peak_memory_mb > 50  # torch and the model are resident


def test_bench_train_command_writes_json(data, tiny_config, tmp_path, monkeypatch, capsys):
    out = tmp_path / "train.json"
    code, stdout, stderr = run_cli(
        ["bench", "--train", "-c", tiny_config, "--data", data, "--size", 64, "--size", 96,
         "--batch", 2, "--warmup", 1, "--iters", 3, "--threads", 1, "--workers", 0,
         "--json", out, "model.decoder.kernel_dim=8"], monkeypatch, capsys,
    )
    assert code == 0, stderr
    assert "s/it" in stdout and "fwd+loss s" in stdout and "tiny" in stdout
    rows = json.loads(out.read_text())["results"]
    assert [(r["variant"], r["sizes"], r["batch"]) for r in rows] == [
        ("tiny", [64], 2), ("tiny", [96], 2)]
    for row in rows:
        assert row["images_per_s"] == pytest.approx(2000 / row["step_ms"]["median"])
        assert row["workers"] == 0 and row["iters"] == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train", "-c", "demo", "--weights", "model.pth"], "--weights is for inference"),
        (["--train", "-c", "demo", "--all"], "--all is for inference"),
        (["--train", "-c", "demo", "--data", "demo", "--dtype", "fp64"], "unknown dtype 'fp64'"),
        (["-c", "demo", "--data", "demo"], "--data is for --train"),
        (["-c", "demo", "solver.lr=0.1"], "KEY=VALUE is for --train"),
        (["--train", "-c", "demo", "--data", "missing.yaml"], "neither a file nor a built-in"),
    ],
)
def test_bench_train_user_errors(args, message, monkeypatch, capsys):
    code, _, stderr = run_cli(["bench", *args], monkeypatch, capsys)
    assert code == 2 and message in stderr.replace("\n", " ")
