"""Deformable convolution v1 (no modulation), as the DCN backbones use in res4 and res5."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import deform_conv2d


class DeformConv3x3(nn.Module):
    """A 3x3 deformable conv whose offsets come from a plain 3x3 conv on the same input.

    Official checkpoints name the offset conv `conv2_offset` beside `conv2`; here it lives
    inside the module as `offset` (the key map in checkpoint.py renames it).
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
        if x.device.type == "cpu":
            # torchvision's CPU kernel has no bf16/fp16 version: under CPU autocast this one
            # layer runs in fp32 (a no-op in fp32); the next layer casts back down.
            x, offset, weight = x.float(), offset.float(), weight.float()
            bias = None if bias is None else bias.float()
        return deform_conv2d(
            x, offset, weight, bias,
            stride=self.stride, padding=self.padding, dilation=self.dilation,
        )
