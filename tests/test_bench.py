"""`sparseinst bench` and the benchmark engine: timing, statistics, FLOPs, the command."""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_support import run_cli
from torch import nn

from sparseinst_cli.cli.targets import official_variants
from sparseinst_cli.engine.benchmark import (
    BenchSettings,
    Stats,
    benchmark,
    count_gflops,
    default_image_path,
    trust_warnings,
)
from sparseinst_cli.fileio import read_image_rgb
from sparseinst_cli.modeling.deform import DeformConv3x3
from sparseinst_cli.modeling.fast.nnpack import NnpackConv3x3
from sparseinst_cli.predictor import Predictor, load_model

SIZE = 256  # small inputs keep the tests fast; the shipped image becomes 256 x 341
MODEL = "demo"  # the small zoo model (ResNet-18, slim heads): same code path, far less time


def _conv(cin: int, cout: int, k: int = 1, groups: int = 1) -> int:
    """Weights and bias of a k x k convolution (a Linear is k = 1)."""
    return cin // groups * cout * k * k + cout


# The demo model by hand, from models/demo.yaml: timm's regnetx_004 (5,157,512 parameters) without
# its 1000-class classifier, a 128-channel encoder over its 64/160/384-channel features, and a
# G-IAM decoder (2 convs of 128, 4 groups x 8 masks, 80 classes, 64-dim kernels).
REGNETX_004_FEATURES = 5_157_512 - _conv(384, 1000)
DEMO_ENCODER = (
    _conv(64, 128) + _conv(160, 128) + _conv(384, 128)  # lateral 1x1s
    + 3 * _conv(128, 128, 3)  # output 3x3s
    + 4 * _conv(128, 32) + _conv(256, 128)  # pyramid pooling: 4 stages and the bottleneck
    + _conv(3 * 128, 128)  # fusion
)
DEMO_DECODER = (
    2 * (_conv(128 + 2, 128, 3) + _conv(128, 128, 3))  # both branches' convs (+ coordinates)
    + _conv(128, 4 * 8, 3, groups=4)  # instance activation maps
    + _conv(4 * 128, 4 * 128) + _conv(4 * 128, 80) + _conv(4 * 128, 64) + _conv(4 * 128, 1)
    + _conv(128, 64)  # mask projection
)
DEMO_PARAMS = REGNETX_004_FEATURES + DEMO_ENCODER + DEMO_DECODER


@pytest.fixture(scope="module")
def small():
    return load_model(None, MODEL)


def test_stats_median_and_p90():
    s = Stats.of([0.001 * v for v in (5, 1, 4, 2, 3, 6, 7, 8, 9, 10)])
    assert s.median == pytest.approx(5.5)
    assert s.p90 == pytest.approx(9.1)  # linear interpolation, numpy's default


def test_trust_warnings_name_the_option():
    assert trust_warnings(3, 10) == []
    notes = trust_warnings(1, 5)
    assert len(notes) == 2 and "--warmup" in notes[0] and "--iters" in notes[1]


def test_gflops_of_a_convolution_and_a_deformable_one():
    x = torch.zeros(1, 8, 16, 16)
    conv = nn.Conv2d(8, 4, 3, padding=1, bias=False)
    expected = 2 * 4 * 16 * 16 * 8 * 9 / 1e9  # 2 FLOPs per multiply-add
    assert count_gflops(conv, x) == pytest.approx(expected)
    assert count_gflops(DeformConv3x3(8, 4), x) > expected  # deform conv + its offset conv
    offset_conv = 2 * 18 * 16 * 16 * 8 * 9 / 1e9
    assert count_gflops(DeformConv3x3(8, 4), x) == pytest.approx(expected + offset_conv)
    # The NNPACK (Winograd) path counts as the convolution it computes.
    wide = nn.Conv2d(128, 64, 3, padding=1).eval()
    x = torch.zeros(1, 128, 16, 16)
    assert count_gflops(NnpackConv3x3(wide), x) == pytest.approx(count_gflops(wide, x))


def test_shipped_image_exists():
    assert read_image_rgb(default_image_path()).shape == (333, 444, 3)


def test_latency_agrees_with_an_independent_timing(small):
    """The reported median equals a plain perf_counter loop over forward + post within 10%.

    One thread, and the best of three alternating rounds: on a shared 2-core machine other
    processes stall multi-threaded kernels for seconds at a time.
    """
    image = read_image_rgb(default_image_path())
    settings = BenchSettings(warmup=2, iters=6, threads=1)
    predictor = Predictor(None, loaded=small, min_size=SIZE)
    batch = predictor.prepare([image])

    def independent() -> float:
        times = []
        for _ in range(settings.warmup + settings.iters):
            t0 = time.perf_counter()
            predictor.postprocess(predictor.forward(batch), batch)
            times.append(time.perf_counter() - t0)
        return statistics.median(times[settings.warmup:]) * 1000

    ours, theirs = [], []
    for _ in range(3):
        result = benchmark(small, image, variant=MODEL, size=SIZE, settings=settings)
        ours.append(result.total_ms.median)
        theirs.append(independent())
    assert min(ours) == pytest.approx(min(theirs), rel=0.10)


def test_result_fields(small):
    image = read_image_rgb(default_image_path())
    calls = []
    settings = BenchSettings(warmup=1, iters=2, batch=2, threads=1)
    r = benchmark(
        small, image, variant=MODEL, size=SIZE, settings=settings,
        on_progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert r.input_hw == (256, 352) and r.batch == 2 and r.threads == 1  # padded to 32
    assert r.params == DEMO_PARAMS
    single = benchmark(small, image, variant=MODEL, size=SIZE,
                       settings=BenchSettings(warmup=0, iters=1, threads=1))
    assert r.gflops == pytest.approx(single.gflops) and r.gflops > 0  # per image, not per batch
    assert r.total_ms.median >= r.model_ms.median > 0
    assert r.fps == pytest.approx(2000 / r.total_ms.median)
    # Per image: what post-processing keeps of the same model's outputs for this image alone.
    alone = Predictor(None, loaded=small, min_size=SIZE).predict(image)
    assert r.detections == len(alone.instances)


def test_bench_command_writes_json_and_warns(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench.json"
    code, stdout, stderr = run_cli(
        ["bench", "-c", MODEL, "--size", str(SIZE), "--warmup", "0", "--iters", "2",
         "--threads", "1", "--json", str(out)], monkeypatch, capsys,
    )
    assert code == 0, stderr
    assert MODEL in stdout and "FPS" in stdout
    assert "--warmup 0 is below 3" in stderr and "--iters 2 is below 10" in stderr
    data = json.loads(out.read_text())
    assert set(data["environment"]) >= {"cpu", "torch", "torchvision", "python"}
    (row,) = data["results"]
    assert row["variant"] == MODEL and row["size"] == SIZE and row["dtype"] == "fp32"
    assert row["fps"] > 0 and row["gflops"] > 0 and row["params"] > 1e6
    assert set(row["total_ms"]) == {"median", "p90"}


def test_bench_markdown(monkeypatch, capsys):
    code, stdout, stderr = run_cli(
        ["-q", "bench", "-c", MODEL, "--size", "128", "--warmup", "3", "--iters", "10",
         "--threads", "1", "--dtype", "bf16", "--markdown"], monkeypatch, capsys,
    )
    assert code == 0, stderr
    assert stdout.startswith("| variant | size | dtype |")
    assert f"| {MODEL} | 128 | bf16 |" in stdout and stderr == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--all", "-c", "r50_giam"], "drop --config/--weights or --all"),
        (["-c", "r50_giam", "--iters", "0"], "--iters 0 must be at least 1"),
        (["-c", "r50_giam", "--dtype", "fp16"], "fp16 is for CUDA"),
        (["-c", "r50_gaim"], "did you mean 'r50_giam'"),
        (["-c", "r50_giam", "--size", "8"], "--size 8 is too small"),
        ([], "bench needs --weights or --config"),
    ],
)
def test_bench_user_errors(args, message, monkeypatch, capsys):
    code, _, stderr = run_cli(["bench", *args], monkeypatch, capsys)
    assert code == 2 and message in stderr.replace("\n", " ")


def test_all_means_the_official_variants():
    names = official_variants()
    assert {"r50_giam", "r50vd_dcn_giam_aug", "pvt_b2_li_giam", "cspdarknet53_giam"} <= set(names)
    assert not any(n.startswith("demo") for n in names)


def test_bench_runs_an_exported_onnx_model(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """ONNX Runtime as a bench backend: the same parameter and GFLOP counts as the .pth."""
    exported = tmp_path / "tiny.onnx"
    code, _, stderr = run_cli(["-q", "export", "-w", str(tiny_checkpoint), "--dynamic",
                               "--out", str(exported)], monkeypatch, capsys)
    assert code == 0, stderr
    rows = {}
    for weights in (tiny_checkpoint, exported):
        out = tmp_path / f"{weights.stem}.json"
        code, _, stderr = run_cli(
            ["-q", "bench", "-w", str(weights), "--size", "128", "--warmup", "1", "--iters", "1",
             "--threads", "1", "--json", str(out)], monkeypatch, capsys,
        )
        assert code == 0, stderr
        (rows[weights.suffix],) = json.loads(out.read_text())["results"]
    assert rows[".onnx"]["params"] == rows[".pth"]["params"]
    assert rows[".onnx"]["gflops"] == pytest.approx(rows[".pth"]["gflops"])
    assert rows[".onnx"]["input_hw"] == rows[".pth"]["input_hw"]
    assert rows[".onnx"]["total_ms"]["median"] > 0
    code, _, stderr = run_cli(["bench", "-w", str(exported), "--size", "128", "--dtype", "bf16"],
                              monkeypatch, capsys)
    assert code == 2 and "runs as exported (fp32)" in stderr


def test_maskrcnn_comparison_script_runs_both_workers_and_prints_the_ratio():
    """benchmarks/vs_maskrcnn.py: two worker processes, each with its own OpenMP settings."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "vs_maskrcnn.py"
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    out = subprocess.run(
        [sys.executable, str(script), "--warmup", "0", "--iters", "1", "--dtype", "bf16",
         "--size", "320"],
        capture_output=True, text=True, env=env, timeout=600, check=True,
    ).stdout
    assert "padded to 480x320" in out  # 500x333 resized to a 320 short side, padded to 32
    assert "GOMP_SPINCOUNT: ours default, Mask R-CNN default" in out  # bf16 only: long spins
    ours = float(re.search(r"G-IAM \(bf16\): median ([\d.]+) ms", out)[1])
    theirs = float(re.search(r"Mask R-CNN R-50-FPN \(fp32\): +median ([\d.]+) ms", out)[1])
    ratio = float(re.search(r"median of pairs ([\d.]+)", out)[1])
    assert ratio == pytest.approx(ours / theirs, abs=1e-3)
