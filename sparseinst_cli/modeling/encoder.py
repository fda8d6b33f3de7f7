"""Instance Context Encoder: FPN top-down path with pyramid pooling on res5, fused at stride 8."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .init import c2_msra_fill, c2_xavier_fill


class PyramidPoolingModule(nn.Module):
    """PSP-style context: average pools to 1, 2, 3, 6 cells, 1x1 conv each, upsample, fuse."""

    def __init__(self, in_channels: int, channels: int, sizes: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(size), nn.Conv2d(in_channels, channels, 1))
            for size in sizes
        )
        self.bottleneck = nn.Conv2d(in_channels + len(sizes) * channels, in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] -> [B, C, h, w]."""
        size = x.shape[-2:]
        priors = [
            F.interpolate(F.relu(stage(x)), size=size, mode="bilinear", align_corners=False)
            for stage in self.stages
        ]
        return F.relu(self.bottleneck(torch.cat(priors + [x], dim=1)))


class InstanceContextEncoder(nn.Module):
    """Backbone maps (strides 8/16/32) -> one `channels`-wide map at stride 8.

    Module lists are ordered from the coarsest level (index 0 is res5), as in the official code.
    """

    def __init__(self, *, in_channels: list[int], channels: int):
        super().__init__()
        self.fpn_laterals = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in reversed(in_channels))
        self.fpn_outputs = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels
        )
        for conv in [*self.fpn_laterals, *self.fpn_outputs]:
            c2_xavier_fill(conv)
        self.ppm = PyramidPoolingModule(channels, channels // 4)
        self.fusion = nn.Conv2d(channels * len(in_channels), channels, 1)
        c2_msra_fill(self.fusion)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """[res3, res4, res5] -> [B, C, H/8, W/8]."""
        coarse_first = features[::-1]
        prev = self.ppm(self.fpn_laterals[0](coarse_first[0]))
        outputs = [self.fpn_outputs[0](prev)]
        for feature, lateral, output in zip(
            coarse_first[1:], self.fpn_laterals[1:], self.fpn_outputs[1:]
        ):
            prev = lateral(feature) + F.interpolate(prev, scale_factor=2.0, mode="nearest")
            outputs.insert(0, output(prev))
        size = outputs[0].shape[-2:]
        resized = [outputs[0]] + [
            F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in outputs[1:]
        ]
        return self.fusion(torch.cat(resized, dim=1))
