"""The CPU inference path of the deformable conv equals torchvision's deform_conv2d."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import deform_conv2d

from sparseinst_cli.modeling.deform import DeformConv3x3, deform_conv2d_sampled


@pytest.mark.parametrize(
    ("channels", "hw", "stride", "dilation", "with_bias"),
    [(16, (9, 11), 1, 1, False), (8, (12, 10), 2, 1, True), (8, (13, 9), 1, 2, True),
     (4, (1, 1), 1, 1, False), (4, (1, 7), 2, 1, True)],
)
def test_sampled_equals_torchvision(channels, hw, stride, dilation, with_bias):
    torch.manual_seed(0)
    x = torch.randn(2, channels, *hw)
    weight = torch.randn(6, channels, 3, 3)
    bias = torch.randn(6) if with_bias else None
    ho = (hw[0] + 2 * dilation - 2 * dilation - 1) // stride + 1
    wo = (hw[1] + 2 * dilation - 2 * dilation - 1) // stride + 1
    offset = torch.randn(2, 18, ho, wo) * 3  # many samples fall partly or wholly outside
    geometry = {"stride": stride, "padding": dilation, "dilation": dilation}
    want = deform_conv2d(x, offset, weight, bias, **geometry)
    got = deform_conv2d_sampled(x, offset, weight, bias, **geometry)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5)


def test_module_uses_it_for_inference_only():
    torch.manual_seed(0)
    conv = DeformConv3x3(8, 8)
    torch.nn.init.normal_(conv.offset.weight, std=0.5)
    x = torch.randn(1, 8, 10, 12, requires_grad=True)
    trained = conv(x)  # autograd path: torchvision's op
    trained.sum().backward()
    assert x.grad is not None
    with torch.inference_mode():
        assert torch.allclose(conv(x.detach()), trained.detach(), atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reduced = conv(x.detach())
    assert torch.allclose(reduced.float(), trained.detach(), atol=0.1)
