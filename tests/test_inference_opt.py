"""Inference rewrites keep the outputs: BN folding (checked per backbone) and channels-last."""

from __future__ import annotations

import pytest
import torch
from conftest import LAYOUT_TO_ZOO, official_state_dict

from sparseinst_cli.config import load_config
from sparseinst_cli.loading.checkpoint import load_weights
from sparseinst_cli.modeling import build_model
from sparseinst_cli.modeling.fast.fuse import fold_bn_unchecked
from sparseinst_cli.modeling.fast.inference import optimize_for_inference
from sparseinst_cli.modeling.fast.nnpack import NnpackConv3x3, nnpack_available, use_nnpack_convs
from sparseinst_cli.modeling.fast.winograd import WinogradConv3x3


@pytest.mark.parametrize("nnpack", [False, True], ids=["onednn", "nnpack+winograd"])
@pytest.mark.parametrize(
    ("layout", "expected_folds"),
    [("r50_giam", 53), ("r50vd_dcn_giam", 55), ("cspdarknet53_giam", 67), ("pvt_b1_giam", 0)],
)
def test_optimized_model_matches(layout, expected_folds, nnpack, monkeypatch):
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")  # NNPACK in the backbone too
    cfg = load_config(LAYOUT_TO_ZOO[layout])
    model = build_model(cfg.model).eval()
    load_weights(model, {"model": official_state_dict(layout)}, layout=cfg.model.checkpoint_layout)
    images = torch.rand(1, 3, 160, 224) * 255
    with torch.no_grad():
        reference = model(images)
        fast = optimize_for_inference(model, nnpack=nnpack, winograd=nnpack)  # as on a CPU
        out = fast(images.contiguous(memory_format=torch.channels_last))
        again = model(images)  # the original network is left as it was
    swapped = sum(isinstance(m, NnpackConv3x3) for m in fast.modules())
    assert (swapped >= 9) == (nnpack and nnpack_available())  # 9: encoder + decoder of R-50
    winograd = sum(isinstance(m, WinogradConv3x3) for m in fast.modules())
    wide = {"r50_giam": 2, "cspdarknet53_giam": 4}.get(layout, 0)  # 3x3 convs of 512+ channels
    assert winograd == (wide if nnpack else 0)
    assert (fast.decoder.first_convs is not None) == nnpack  # both branches' first convs merged
    for key in reference:
        assert torch.allclose(out[key], reference[key], atol=1e-4), key
        assert torch.equal(again[key], reference[key]), key
    import copy

    assert fold_bn_unchecked(copy.deepcopy(model.backbone)) == expected_folds
    # The original network is untouched: still has its BatchNorm modules.
    assert any("FrozenBatchNorm" in type(m).__name__ for m in model.backbone.modules()) == (
        expected_folds > 0
    )


def test_folding_refuses_a_wrong_pairing():
    """A conv followed (in registration order) by a BN that it does not feed is left alone."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    from sparseinst_cli.modeling.fast.fuse import fold_frozen_bn

    class Misordered(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            self.bn = FrozenBatchNorm2d(3)
            self.bn.weight.fill_(2.0)

        def forward(self, x):
            return [self.conv(self.bn(x))]  # BN runs first: folding would be wrong

    module = Misordered()
    out, count = fold_frozen_bn(module, torch.randn(1, 3, 8, 8))
    assert count == 0 and out is module


def test_deformable_variant_runs_in_bf16_on_cpu():
    """torchvision has no CPU bf16 deform_conv2d: those layers run in fp32 under bf16 autocast,
    so the DCN variants run with --dtype bf16 and stay close to fp32."""
    cfg = load_config(LAYOUT_TO_ZOO["r50vd_dcn_giam"])
    model = build_model(cfg.model).eval()
    load_weights(model, {"model": official_state_dict("r50vd_dcn_giam")},
                 layout=cfg.model.checkpoint_layout)
    images = torch.rand(1, 3, 128, 160) * 255
    with torch.inference_mode():
        reference = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reduced = model(images)
    scores = reference["pred_logits"].sigmoid()
    assert torch.isfinite(reduced["pred_masks"].float()).all()
    assert (reduced["pred_logits"].float().sigmoid() - scores).abs().max() < 0.05


@pytest.mark.skipif(not nnpack_available(), reason="this torch build has no NNPACK")
@pytest.mark.parametrize("groups", [1, 4])
def test_nnpack_conv_equals_direct_convolution(groups):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(128, 96, 3, padding=1, groups=groups).eval()
    x = torch.randn(1, 128, 37, 51)
    with torch.inference_mode():
        want = conv(x)
        fast = NnpackConv3x3(conv)
        assert torch.allclose(fast(x), want, atol=1e-4)
        as_channels_last = NnpackConv3x3(conv, channels_last_output=True)(
            x.contiguous(memory_format=torch.channels_last))
        assert as_channels_last.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(as_channels_last, want, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16: oneDNN, not NNPACK
            assert fast(x).dtype == torch.bfloat16
    traced = torch.jit.trace(fast, x, check_trace=False)  # graphs keep the standard convolution op
    assert "_nnpack" not in str(traced.graph) and "conv" in str(traced.graph)


def test_nnpack_swaps_only_what_it_supports():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(256, 256, 3, padding=1),  # yes
        torch.nn.Conv2d(256, 256, 3, padding=1, stride=2),  # strided: no
        torch.nn.Conv2d(256, 256, 1),  # 1x1: no
        torch.nn.Conv2d(64, 64, 3, padding=1),  # narrow: no
        torch.nn.Conv2d(512, 512, 3, padding=1),  # wider than max_channels: no
        torch.nn.Conv2d(256, 256, 3, padding=1, groups=256),  # depthwise: no
    )
    swapped = use_nnpack_convs(net, max_channels=384)
    assert swapped == (1 if nnpack_available() else 0)
    assert [type(m) is torch.nn.Conv2d for m in net] == [swapped == 0, *[True] * 5]


def test_weights_stored_in_the_autocast_dtype_give_the_same_outputs():
    cfg = load_config(LAYOUT_TO_ZOO["r50_giam"])
    model = build_model(cfg.model).eval()
    load_weights(model, {"model": official_state_dict("r50_giam")},
                 layout=cfg.model.checkpoint_layout)
    images = (torch.rand(1, 3, 128, 160) * 255).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        cast_each_time = optimize_for_inference(model)
        stored = optimize_for_inference(model, autocast_dtype=torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want, got = cast_each_time(images), stored(images)
    convs = [m for m in stored.modules() if type(m) is torch.nn.Conv2d]
    assert convs and all(c.weight.dtype == torch.bfloat16 for c in convs)
    assert model.decoder.inst_branch.inst_convs[0].weight.dtype == torch.float32  # untouched
    for key in want:
        assert torch.equal(got[key], want[key]), key
