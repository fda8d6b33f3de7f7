"""The small-object head of `models/small.yaml`: stride-4 mask branch and centre prior."""
from __future__ import annotations

import pytest
import torch
from model_support import assert_batch_independent

from sparseinst_cli.config import load_config
from sparseinst_cli.export import ExportOptions, export_model
from sparseinst_cli.loading import load_model
from sparseinst_cli.loading.onnx_backend import OnnxModel
from sparseinst_cli.modeling.build import build_model
from sparseinst_cli.modeling.small_head import activation_centres, centre_penalty

SMALL = ["model.decoder.num_masks=16", "model.num_classes=2"]


def test_activation_centres_are_the_centre_of_mass_averaged_over_groups():
    h, w, groups, n = 5, 7, 2, 3
    maps = torch.zeros(1, groups * n, h * w)
    maps[0, 0, 2 * w + 3] = 1.0  # group 0, instance 0 at (x=3, y=2)
    maps[0, n, 4 * w + 1] = 1.0  # group 1, instance 0 at (x=1, y=4)
    maps[0, 1, [0, w - 1]] = 0.5  # group 0, instance 1: half at (0, 0), half at (6, 0)
    maps[0, n + 1, 0] = 1.0
    maps[0, 2, 0] = maps[0, n + 2, h * w - 1] = 1.0
    centres = activation_centres(maps, (h, w), groups, n)
    expected = torch.tensor([[[2.0, 3.0], [1.5, 0.0], [3.0, 2.0]]])
    torch.testing.assert_close(centres, expected)


def test_centre_penalty_is_spread_times_squared_distance():
    centres = torch.tensor([[[1.0, 2.0], [0.5, 0.0]]])
    spread = torch.tensor([[[0.5], [2.0]]])
    penalty = centre_penalty(centres, spread, (3, 4)).reshape(1, 2, 3, 4)
    ys, xs = torch.meshgrid(torch.arange(3.0), torch.arange(4.0), indexing="ij")
    torch.testing.assert_close(penalty[0, 0], 0.5 * ((xs - 1) ** 2 + (ys - 2) ** 2))
    torch.testing.assert_close(penalty[0, 1], 2.0 * ((xs - 0.5) ** 2 + ys**2))
    assert penalty[0, 0, 2, 1] == 0


PRIORS = ["round", "elongated"]  # model.decoder.object_shape: nuclei, rods


@pytest.fixture(scope="module", params=PRIORS)
def small_model(request):
    torch.manual_seed(0)
    shape = f"model.decoder.object_shape={request.param}"
    return build_model(load_config("small", [*SMALL, shape]).model).eval()


def test_small_head_gives_masks_at_stride_4_and_official_keys_are_unchanged(small_model):
    with torch.no_grad():
        out = small_model(torch.rand(1, 3, 96, 128) * 255)
    assert out["pred_masks"].shape == (1, 16, 24, 32)
    assert set(out) == {"pred_logits", "pred_scores", "pred_masks"}
    keys = small_model.state_dict().keys()
    assert {"decoder.mask_branch.fine_lateral.weight",
            "decoder.inst_branch.mask_spread.weight"} <= keys
    demo = build_model(load_config("demo", SMALL).model).state_dict().keys()
    assert not any("fine_" in k or "mask_spread" in k for k in demo)


def test_batched_equals_per_image(small_model):
    assert_batch_independent(small_model, torch.rand(2, 3, 64, 96) * 255)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("prior", PRIORS)
def test_small_model_exports_to_onnx_with_parity(tmp_path, prior):
    pytest.importorskip("onnxruntime")
    loaded = load_model(None, "small", [*SMALL, f"model.decoder.object_shape={prior}"])
    out = tmp_path / "small.onnx"
    result = export_model(loaded, ExportOptions(format="onnx", dynamic=True, out=out,
                                                size=(96, 128)))
    assert result.passed and out.is_file()
    assert OnnxModel(out).output_names
