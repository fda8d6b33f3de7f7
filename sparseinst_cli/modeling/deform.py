"""Deformable convolution v1 (no modulation), as the DCN backbones use in res4 and res5."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

from .capture import capturing_graph


class DeformConv3x3(nn.Module):
    """A 3x3 deformable conv whose offsets come from a plain 3x3 conv on the same input.

    Official checkpoints name the offset conv `conv2_offset` beside `conv2`; here it lives
    inside the module as `offset` (the key map in loading/checkpoint.py renames it).
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.stride, self.padding, self.dilation = stride, dilation, dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.bias: nn.Parameter | None = None
        self.offset = nn.Conv2d(
            in_channels, 18, 3, stride=stride, padding=dilation, dilation=dilation
        )
        nn.init.kaiming_uniform_(self.weight, a=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> DeformConv3x3:
        module = cls(
            conv.in_channels, conv.out_channels, stride=conv.stride[0], dilation=conv.dilation[0]
        )
        module.weight.data.copy_(conv.weight.data)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C_out, H/stride, W/stride]."""
        offset = self.offset(x)
        weight, bias = self.weight, self.bias  # bias: only set once BN is folded in
        geometry = {"stride": self.stride, "padding": self.padding, "dilation": self.dilation}
        if x.device.type == "cpu" and not torch.is_grad_enabled() and not capturing_graph():
            return deform_conv2d_sampled(x, offset, weight, bias, **geometry)
        if x.device.type == "cpu":
            # torchvision's CPU kernel has no bf16/fp16 version: under CPU autocast this one
            # layer runs in fp32 (a no-op in fp32); the next layer casts back down.
            x, offset, weight = x.float(), offset.float(), weight.float()
            bias = None if bias is None else bias.float()
        return deform_conv2d(x, offset, weight, bias, **geometry)


def deform_conv2d_sampled(
    x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
    stride: int, padding: int, dilation: int,
) -> torch.Tensor:
    """torchvision's `deform_conv2d` (one offset group, no mask), faster on a CPU: every
    tap's bilinear samples in one `grid_sample` call, then one matrix product with the weights.

    Same sampling rule (neighbours outside the image count as zero); the sample positions are
    computed in fp32 even under bf16 autocast, where only the matrix product runs in bf16.
    """
    b, c, h, w = x.shape
    cout, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    taps = kh * kw
    f32 = {"dtype": torch.float32, "device": x.device}
    tap_y = torch.arange(kh, **f32).repeat_interleave(kw) * dilation
    tap_x = torch.arange(kw, **f32).repeat(kh) * dilation
    rows = torch.arange(ho, **f32) * stride - padding
    cols = torch.arange(wo, **f32) * stride - padding
    off = offset.float().view(b, taps, 2, ho, wo)  # (dy, dx) per tap, as torchvision orders them
    y = off[:, :, 0] + (tap_y.view(1, taps, 1, 1) + rows.view(1, 1, ho, 1))
    x_pos = off[:, :, 1] + (tap_x.view(1, taps, 1, 1) + cols.view(1, 1, 1, wo))
    # Pixel centres to grid_sample's [-1, 1] (align_corners=False also handles 1-pixel maps).
    grid = torch.stack(((2 * x_pos + 1) / w - 1, (2 * y + 1) / h - 1), dim=-1)
    samples = F.grid_sample(x.float(), grid.view(b, taps * ho, wo, 2), mode="bilinear",
                            padding_mode="zeros", align_corners=False)  # [B, C, taps*Ho, Wo]
    out = torch.matmul(weight.reshape(cout, c * taps), samples.reshape(b, c * taps, ho * wo))
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    return out.view(b, cout, ho, wo)
