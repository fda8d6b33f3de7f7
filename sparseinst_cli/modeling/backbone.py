"""Backbones: any timm model, reduced to its stride 8/16/32 feature maps.

The official R-50/R-101 (torchvision-style), R-50-vd (timm `resnet50d`), CSPDarkNet-53 and
PVTv2 backbones are all timm architectures; loading/checkpoint.py maps the official key names.
"""

from __future__ import annotations

import timm
import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn

from ..errors import UserError
from .deform import DeformConv3x3

NORMS = ("frozen_bn", "bn")


class TimmBackbone(nn.Module):
    """Wraps a timm model; `forward` returns its last feature map at each of `strides`
    (8, 16, 32 for the encoder; 4, 8, 16, 32 when a fine mask branch also reads stride 4).

    `channels` and `strides` size the encoder, as timm's `feature_info` does.
    """

    def __init__(
        self, *, name: str, norm: str = "frozen_bn", dcn_stages: list[int] = (),
        strides: tuple[int, ...] = (8, 16, 32),
    ):
        super().__init__()
        if norm not in NORMS:
            raise UserError(f"backbone norm '{norm}' is not one of {', '.join(NORMS)}")
        try:
            body = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
        except RuntimeError as exc:  # timm: "Unknown model (...)"
            close = timm.list_models(f"*{name}*")[:5]
            hint = f"; similar timm models: {', '.join(close)}" if close else ""
            raise UserError(f"unknown backbone '{name}' ({exc}){hint}") from None
        if not hasattr(body, "forward_intermediates"):
            raise UserError(
                f"timm model '{name}' has no feature extraction (forward_intermediates)"
            )
        info = [f for f in body.feature_info if f["reduction"] in strides]
        # The last map at each of the three strides.
        by_stride = {f["reduction"]: i for i, f in enumerate(body.feature_info) if f in info}
        if sorted(by_stride) != sorted(strides):
            wanted = ", ".join(map(str, strides))
            raise UserError(f"backbone '{name}' lacks feature maps at strides {wanted}")
        self.indices = [by_stride[s] for s in strides]
        self.channels = [body.feature_info[i]["num_chs"] for i in self.indices]
        self.strides = list(strides)
        if dcn_stages:
            _make_deformable(body, dcn_stages)
        if norm == "frozen_bn":
            body = freeze_batch_norm_2d(body)
        self.body = body
        self.name = name

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[B, 3, H, W] -> [res3 [B,C3,H/8,W/8], res4 [B,C4,H/16,W/16], res5 [B,C5,H/32,W/32]],
        preceded by res2 [B,C2,H/4,W/4] when stride 4 is asked for."""
        return self.body.forward_intermediates(x, indices=self.indices, intermediates_only=True)


def _make_deformable(body: nn.Module, stages: list[int]) -> None:
    """Swap every bottleneck 3x3 `conv2` of ResNet stages (res4=3, res5=4) for a DCN v1."""
    for stage in stages:
        layer = getattr(body, f"layer{stage - 1}", None)
        if layer is None:
            raise UserError(f"deformable stages need a ResNet backbone with stage res{stage}")
        for block in layer:
            if not isinstance(getattr(block, "conv2", None), nn.Conv2d):
                raise UserError("deformable convs need ResNet bottleneck blocks with a 3x3 conv2")
            block.conv2 = DeformConv3x3.from_conv(block.conv2)
