"""Winograd F(2x2, 3x3) convolutions equal direct convolution (fp32) or stay as close as bf16."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import LAYOUT_TO_ZOO, official_state_dict
from torch import nn

from sparseinst_cli.config import load_config
from sparseinst_cli.loading.checkpoint import load_weights
from sparseinst_cli.modeling import build_model
from sparseinst_cli.modeling.fast.inference import optimize_for_inference
from sparseinst_cli.modeling.fast.winograd import (
    WinogradConv3x3,
    transform_weights,
    use_winograd_convs,
    winograd_conv3x3,
)


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 16, 24), (2, 13, 9), (1, 1, 1)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("relu", [False, True])
def test_fp32_equals_direct_convolution(batch, height, width, bias, relu):
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 40, 3, padding=1, bias=bias)
    x = torch.randn(batch, 24, height, width)
    with torch.no_grad():  # inference only: the transforms write with out=
        want = conv(x).relu() if relu else conv(x)
        got = winograd_conv3x3(
            x, transform_weights(conv.weight, torch.float32), conv.bias, relu=relu
        )
    assert got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last) or height * width == 1
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_bf16_error_is_within_a_few_bf16_steps():
    """Transforms add and subtract bf16 values; the error stays about 2x that of direct bf16."""
    torch.manual_seed(0)
    weight, bias = torch.randn(256, 256, 3, 3) * 0.05, torch.randn(256)
    x = torch.randn(1, 256, 20, 27)
    exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    direct = F.conv2d(x.bfloat16(), weight.bfloat16(), bias.bfloat16(), padding=1).double()
    got = winograd_conv3x3(x, transform_weights(weight, torch.bfloat16), bias).double()
    assert got.dtype == torch.float64 and exact.abs().max() > 5
    direct_error = (direct - exact).abs().max()
    assert (got - exact).abs().max() <= 3 * direct_error


def test_module_falls_back_to_direct_convolution_where_it_should():
    conv = nn.Conv2d(16, 8, 3, padding=1)
    fast = WinogradConv3x3(conv, torch.bfloat16)
    x = torch.randn(1, 16, 10, 12)
    with torch.no_grad():
        # fp32 input, bf16 transformed weights: direct fp32 convolution, exactly as before
        assert torch.equal(fast(x), conv(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert fast(x).dtype == torch.bfloat16
    traced = torch.jit.trace(fast, x, check_trace=False)  # graphs keep the standard conv op
    assert "bmm" not in str(traced.graph) and "conv" in str(traced.graph)


def test_swaps_only_what_it_supports_and_fuses_the_following_relu():
    net = nn.Sequential(
        nn.Conv2d(128, 128, 3, padding=1),  # yes, and its ReLU is fused
        nn.ReLU(inplace=True),
        nn.Conv2d(128, 128, 3, padding=1, stride=2),  # strided: no
        nn.Conv2d(128, 128, 1),  # 1x1: no
        nn.Conv2d(64, 64, 3, padding=1),  # narrower than min_channels: no
        nn.Conv2d(128, 128, 3, padding=1, groups=4),  # grouped: no
        nn.Conv2d(128, 128, 3, padding=2, dilation=2),  # dilated: no
        nn.Conv2d(128, 128, 3, padding=1),  # yes, without a ReLU
    ).eval()
    original = copy.deepcopy(net)
    assert use_winograd_convs(net, torch.float32, min_channels=128) == 2
    assert isinstance(net[0], WinogradConv3x3) and net[0].relu and isinstance(net[1], nn.Identity)
    assert isinstance(net[7], WinogradConv3x3) and not net[7].relu
    assert all(type(m) is nn.Conv2d for m in net[2:7])
    x = torch.randn(1, 128, 12, 14)
    with torch.no_grad():
        assert torch.allclose(net[:2](x), original[:2](x), atol=1e-4)
        assert torch.allclose(net[7](x), original[7](x), atol=1e-4)


def _official_r50_giam() -> nn.Module:
    cfg = load_config(LAYOUT_TO_ZOO["r50_giam"])
    model = build_model(cfg.model).eval()
    load_weights(model, {"model": official_state_dict("r50_giam")},
                 layout=cfg.model.checkpoint_layout)
    return model


def test_bf16_network_with_winograd_stays_close_to_fp32():
    model = _official_r50_giam()
    images = (torch.rand(1, 3, 160, 224) * 255).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        reference = model(images)
        fast = optimize_for_inference(model, winograd=True, autocast_dtype=torch.bfloat16)
        plain = optimize_for_inference(model, autocast_dtype=torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            direct, got = plain(images), fast(images)
    swapped = [m for m in fast.modules() if isinstance(m, WinogradConv3x3)]
    # R-50's stride-1 3x3 convs of res3-res5 (3 + 5 + 2), encoder outputs (3), decoder (the
    # branches' first convs merged into one, then 3 + 3)
    assert len(swapped) == 20
    assert isinstance(fast.decoder.first_convs.layers[0], WinogradConv3x3)
    assert sum(m.relu for m in swapped) == 7  # the decoder's conv + ReLU pairs
    for key in ("pred_logits", "pred_scores", "pred_masks"):
        want = reference[key].sigmoid()
        direct_error = (direct[key].float().sigmoid() - want).abs().max()
        error = (got[key].float().sigmoid() - want).abs().max()
        assert error <= max(2 * direct_error, 0.01), key
