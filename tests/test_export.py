"""`sparseinst export` and the ONNX backend: dynamic-shape parity, layouts, metadata, DCN, CLI.

One dynamic ONNX export of r50_giam (synthetic official weights) is shared by several tests; the
other exports use small check sizes to keep the file fast on two cores.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_util

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import official_state_dict  # noqa: E402

from sparseinst_cli.errors import UserError  # noqa: E402
from sparseinst_cli.export import (  # noqa: E402
    ExportOptions,
    ParityError,
    ParityRow,
    adaptive_avg_pool2d,
    check_options,
    export_model,
    export_ready,
    pipeline,  # noqa: E402
)
from sparseinst_cli.export.graph import DynamicAdaptiveAvgPool2d  # noqa: E402
from sparseinst_cli.export.onnx import read_metadata, resolve_opset  # noqa: E402
from sparseinst_cli.export.parity import parity_batch  # noqa: E402
from sparseinst_cli.export.torchscript import load_torchscript  # noqa: E402
from sparseinst_cli.fileio import read_image_rgb  # noqa: E402
from sparseinst_cli.loading import load_onnx_model  # noqa: E402
from sparseinst_cli.loading.onnx_backend import OnnxModel, raw_outputs_from_probs  # noqa: E402
from sparseinst_cli.postprocess import instance_scores, postprocess_image  # noqa: E402
from sparseinst_cli.predictor import Predictor, load_model  # noqa: E402

DATA = Path(__file__).parent / "data"
IMAGE = DATA / "000000006471.jpg"
TOL = 1e-4


def _synth_checkpoint(layout: str, path: Path) -> Path:
    torch.save({"model": official_state_dict(layout)}, path)
    return path


@pytest.fixture(scope="module")
def weights(r50_giam_official) -> Path:
    return r50_giam_official


@pytest.fixture(scope="module")
def loaded(weights):
    return load_model(weights, "r50_giam")


@pytest.fixture(scope="module")
def dynamic_onnx(loaded, tmp_path_factory):
    """The acceptance export: one dynamic graph, checked at 320x480 and 608x800."""
    out = tmp_path_factory.mktemp("onnx") / "r50_giam.onnx"
    return export_model(loaded, ExportOptions(format="onnx", dynamic=True, out=out))


# ----------------------------------------------------------------------------- pooling


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (6, 6), (7, 5), (10, 15), (17, 25), (19, 25)])
def test_dynamic_adaptive_pool_equals_pytorch(hw):
    x = torch.randn(2, 8, *hw)
    for size in (1, 2, 3, 6, (2, 3)):
        expected = F.adaptive_avg_pool2d(x, size)
        got = DynamicAdaptiveAvgPool2d(size)(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(adaptive_avg_pool2d(x, (1, 1)), x.mean((2, 3), keepdim=True))


def test_export_ready_swaps_every_adaptive_pool(loaded):
    module = export_ready(loaded.model)
    swapped = [m for m in module.modules() if isinstance(m, DynamicAdaptiveAvgPool2d)]
    assert sorted(m.output_size[0] for m in swapped) == [1, 2, 3, 6]
    assert not any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in module.modules())
    assert any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in loaded.model.modules())


# ----------------------------------------------------------------------------- ONNX, dynamic


def test_dynamic_onnx_matches_pytorch_at_two_sizes(dynamic_onnx):
    rows = dynamic_onnx.rows
    assert [r.size for r in rows] == [(320, 480), (608, 800)]
    for r in rows:
        assert r.score_diff <= TOL and r.mask_diff <= TOL, r
        assert r.instances > 0 and r.min_iou >= 0.99, r
    assert dynamic_onnx.written and dynamic_onnx.path.is_file()
    assert [p.name for p in dynamic_onnx.path.parent.iterdir()] == [dynamic_onnx.path.name]


def test_dynamic_onnx_has_symbolic_inputs_and_metadata(dynamic_onnx):
    import onnx

    graph = onnx.load(str(dynamic_onnx.path), load_external_data=False).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert [o.name for o in graph.output] == ["scores", "masks"]
    meta = read_metadata(dynamic_onnx.path)
    assert meta["layout"] == "raw" and meta["stride"] == "32" and meta["input_size"] == "dynamic"
    assert len(json.loads(meta["class_names"])) == 80
    assert json.loads(meta["pixel_mean"]) == pytest.approx([123.675, 116.28, 103.53])
    assert "RGB" in meta["input_format"] and "pixel_mean" in meta["input_format"]
    assert json.loads(meta["config"])["model"]["decoder"]["kind"] == "giam"


def test_onnx_model_predicts_like_pytorch(dynamic_onnx, loaded):
    """The backend predict uses: same instances as the PyTorch Predictor (batch of two)."""
    onnx_loaded = load_onnx_model(dynamic_onnx.path)
    assert onnx_loaded.class_names == loaded.class_names
    image = read_image_rgb(IMAGE)
    images = [image, np.ascontiguousarray(image[:, ::-1])]
    ref = Predictor(None, loaded=loaded, min_size=320, optimize=False).predict_batch(images)
    got = Predictor(None, loaded=onnx_loaded, min_size=320, optimize=False).predict_batch(images)
    for a, b in zip(ref, got):
        a, b = a.instances, b.instances
        assert len(a) == len(b) > 0
        assert torch.equal(a.labels, b.labels)
        assert (a.scores - b.scores).abs().max() <= TOL
        inter = (a.masks & b.masks).flatten(1).sum(1)
        union = (a.masks | b.masks).flatten(1).sum(1)
        assert (inter / union.clamp(min=1))[union > 0].min() >= 0.99


def test_predict_command_gives_the_same_json_for_onnx_and_pth(dynamic_onnx, weights, tmp_path):
    """`sparseinst predict` with the exported .onnx writes what it writes with the .pth."""
    from test_predict_cli import run_cli

    outputs = {}
    for name, args in (("pth", [weights, "--config", "r50_giam"]), ("onnx", [dynamic_onnx.path])):
        out = tmp_path / name
        result = run_cli("predict", IMAGE, "--weights", *args, "--out", out, "--size", "320",
                         "--save-json", "--no-images", "--conf", "0.2")
        assert result.returncode == 0, result.stderr
        outputs[name] = json.loads((out / "predictions.json").read_text())
    pth, onnx = outputs["pth"], outputs["onnx"]
    assert len(pth) == len(onnx) > 0
    for a, b in zip(pth, onnx):
        assert a["category_id"] == b["category_id"] and abs(a["score"] - b["score"]) <= TOL
        ma, mb = (mask_util.decode(e["segmentation"]).astype(bool) for e in (a, b))
        assert (ma & mb).sum() / max((ma | mb).sum(), 1) >= 0.99


def test_raw_outputs_from_probs_give_back_the_probabilities():
    scores = torch.cat([torch.rand(1, 50, 80), torch.tensor([0.0, 1.0]).repeat(1, 50, 20)], 2)
    masks = torch.rand(1, 50, 8, 8)
    masks[0, 0] = 0.0
    masks[0, 1] = 1.0
    raw = raw_outputs_from_probs(scores, masks)
    best, labels = instance_scores(raw["pred_logits"][0], raw["pred_scores"][0])
    ref_best, ref_labels = scores[0].max(-1)
    assert (best - ref_best).abs().max() <= 1e-6 and torch.equal(labels, ref_labels)
    assert (raw["pred_masks"].sigmoid() - masks).abs().max() <= 1e-6


# ----------------------------------------------------------------------------- other exports


def test_end_to_end_static_export_matches_postprocess(loaded, tmp_path):
    out = tmp_path / "e2e.onnx"
    result = export_model(loaded, ExportOptions(end_to_end=True, size=(128, 192), out=out))
    assert result.passed and result.input_size == "128x192" and len(result.rows) == 1
    model = OnnxModel(out)
    assert model.output_names == ["scores", "labels", "keep", "masks"]
    assert model.fixed_hw == (128, 192)
    batch = parity_batch(read_image_rgb(IMAGE), (128, 192), loaded.config.model.pixel_mean)
    got = model.run(batch.images)
    with torch.inference_mode():
        raw = loaded.model(batch.images)
    inst = postprocess_image(
        raw["pred_logits"][0], raw["pred_scores"][0], raw["pred_masks"][0],
        padded_hw=(128, 192), image_hw=batch.image_sizes[0], orig_hw=batch.orig_sizes[0],
    )
    keep = got["keep"][0]
    assert int(keep.sum()) == len(inst)
    np.testing.assert_allclose(got["scores"][0][keep], inst.scores.numpy(), atol=TOL)
    np.testing.assert_array_equal(got["labels"][0][keep], inst.labels.numpy())
    with pytest.raises(UserError, match="end-to-end"):
        model(batch.images)


def test_torchscript_round_trip_through_the_cli(weights, tmp_path):
    from typer.testing import CliRunner

    from sparseinst_cli.cli.app import app

    out = tmp_path / "m.torchscript"
    args = ["export", "-w", str(weights), "-c", "r50_giam", "-f", "torchscript", "--out",
            str(out), "--check-size", "128x192", "--check-size", "320x480"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "pass" in result.output and "FAIL" not in result.output
    module, meta = load_torchscript(out)
    assert meta["layout"] == "raw" and len(meta["class_names"]) == 80
    scores, masks = module(torch.full((2, 3, 96, 160), 120.0))  # a third size, batch 2
    assert scores.shape == (2, 100, 80) and masks.shape == (2, 100, 24, 40)


def test_dcn_exports_with_deform_conv_or_fails_clearly(tmp_path):
    weights = _synth_checkpoint("r50_dcn_giam", tmp_path / "dcn.pth")
    loaded = load_model(weights, "r50_dcn_giam_aug")
    out = tmp_path / "dcn.onnx"
    options = ExportOptions(dynamic=True, out=out, parity_sizes=((128, 192),))
    try:
        result = export_model(loaded, options)
    except UserError as exc:  # an onnxruntime without a DeformConv kernel
        assert "DeformConv" in str(exc) and not out.exists()
        return
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "DeformConv" in ops and result.opset == 19
    r = result.rows[0]
    assert r.score_diff <= TOL and r.mask_diff <= TOL and r.min_iou >= 0.99


# ----------------------------------------------------------------------------- failures


def test_failed_parity_leaves_no_file(loaded, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "write_torchscript", lambda *a, **k: a[2].write_bytes(b"x"))
    bad = [ParityRow(size=(64, 64), score_diff=1.0, mask_diff=0.0)]
    monkeypatch.setattr(pipeline, "_parity", lambda *a, **k: bad)
    out = tmp_path / "m.torchscript"
    with pytest.raises(ParityError) as info:
        export_model(loaded, ExportOptions(format="torchscript", out=out, size=(64, 64)))
    assert not info.value.result.passed
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (ExportOptions(format="tflite"), "--format"),
        (ExportOptions(out=Path("m.pt")), ".onnx"),
        (ExportOptions(format="torchscript", out=Path("m.onnx")), "torchscript"),
        (ExportOptions(size=(100, 640)), "multiples of 32"),
    ],
)
def test_bad_options_are_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        check_options(options)


def test_dcn_needs_opset_19():
    with pytest.raises(UserError, match="opset 19"):
        resolve_opset(17, exporter="torchscript", deformable=True)
    assert resolve_opset(None, exporter="torchscript", deformable=True) == 19
    assert resolve_opset(None, exporter="torchscript", deformable=False) == 17
