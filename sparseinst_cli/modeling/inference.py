"""Make a trained SparseInst fast for inference without changing its outputs."""

from __future__ import annotations

import torch

from .fuse import fold_frozen_bn
from .sparseinst import SparseInst


@torch.no_grad()
def optimize_for_inference(model: SparseInst, *, channels_last: bool = True) -> SparseInst:
    """Fold BN into convs (checked numerically) and use channels-last memory (oneDNN-friendly).

    Returns a new network; `model` itself (possibly still training) is left as it is.
    """
    model.eval()
    device = model.pixel_mean.device
    example = torch.randn(1, 3, 128, 128, device=device)
    backbone, _ = fold_frozen_bn(model.backbone, example)
    fast = model.with_backbone(backbone).eval()
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    return fast
