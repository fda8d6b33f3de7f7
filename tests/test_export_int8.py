"""`sparseinst export --int8`: int8 convolutions calibrated on the user's data, float heads, the
same commands afterwards (eval, predict, bench), and the mistakes refused before any work."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from cli_support import run_cli  # noqa: E402
from train_support import make_dataset, train  # noqa: E402

from sparseinst_cli.export.onnx import read_metadata  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny model trained for 300 iterations (masks that mean something) and its DATA.yaml."""
    root = tmp_path_factory.mktemp("int8")
    data = make_dataset(root / "data", n_train=8, n_val=4)
    summary = train(data, root / "runs", overrides=("solver.max_iter=300", "solver.steps=[250]"))
    return summary.last, data


@pytest.fixture(scope="module")
def int8_graph(trained, tmp_path_factory) -> Path:
    weights, data = trained
    out = tmp_path_factory.mktemp("graph") / "tiny.int8.onnx"
    code = _cli(["export", "-w", weights, "--int8", "--data", data, "--calib-images", 4,
                 "--size", "96x128", "--out", out])
    assert code == 0 and out.is_file()
    return out


def _cli(args) -> int:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "sparseinst_cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600).returncode


def test_only_the_convolutions_are_int8(int8_graph):
    graph = onnx.load(str(int8_graph)).graph
    ops = [node.op_type for node in graph.node]
    int8_weights = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # Every conv reads a dequantized int8 weight...
    producers = {out: n for n in graph.node for out in n.output}
    for conv in convs:
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear" and dq.input[0] in int8_weights
    # ...and the matrix products (instance features, kernel x mask features) and sigmoids stay
    # float: nothing quantizes their outputs, so ONNX Runtime has no integer kernel to fuse.
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    floats = [n for n in graph.node if n.op_type in ("MatMul", "Sigmoid")]
    assert floats and not any(out in quantized for n in floats for out in n.output)
    meta = read_metadata(int8_graph)
    assert meta["precision"] == "int8" and meta["input_size"] == "96x128"


def test_the_int8_graph_evaluates_like_the_checkpoint(trained, int8_graph, tmp_path,
                                                      monkeypatch, capsys):
    weights, data = trained
    out = tmp_path / "ap.json"
    code, _, stderr = run_cli(["eval", "--weights", weights, "--weights", int8_graph, "--data",
                               data, "--project", tmp_path, "--json", out], monkeypatch, capsys)
    assert code == 0, stderr
    fp32_ap, int8_ap = (row["AP"] for row in json.loads(out.read_text()))
    assert fp32_ap > 10  # the tiny model has learned the rectangles
    assert abs(fp32_ap - int8_ap) < 5.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--int8"], "--int8 needs calibration images"),
        (["--int8", "--data", "DATA", "--format", "torchscript"], "drop --format torchscript"),
        (["--int8", "--data", "DATA", "--half"], "--int8 or --half, not both"),
        (["--data", "DATA"], "--data is for --int8"),
        (["--int8", "--data", "DATA", "--calib-images", 0], "--calib-images 0 must be at least"),
    ],
)
def test_int8_mistakes_are_refused_before_any_work(trained, args, message, monkeypatch, capsys):
    weights, data = trained
    args = [data if a == "DATA" else a for a in args]
    code, _, stderr = run_cli(["export", "-w", weights, *args], monkeypatch, capsys)
    assert code == 2 and message in stderr.replace("\n", " ")


def test_bench_names_an_int8_graph_int8(int8_graph, tmp_path, monkeypatch, capsys):
    """The row of an exported model shows the precision it was exported in, not fp32."""
    out = tmp_path / "bench.json"
    code, _, stderr = run_cli(["bench", "--weights", int8_graph, "--size", "96", "--warmup", "0",
                               "--iters", "1", "--threads", "1", "--json", out],
                              monkeypatch, capsys)
    assert code == 0, stderr
    (row,) = json.loads(out.read_text())["results"]
    assert row["dtype"] == "int8"
