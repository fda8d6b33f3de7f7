"""Inference-only rewrites: fold frozen BatchNorm into the convolution before it.

A frozen BN is a per-channel affine map, so conv -> BN equals one conv with scaled weights and a
bias. Pairs are found by registration order (conv then BN among a module's children, or the last
conv of a Sequential then a BN), which holds for the ResNet, ResNet-D and CSPDarkNet backbones;
`fold_frozen_bn` checks the result numerically and keeps the original on any mismatch.
"""

from __future__ import annotations

import copy

import torch
from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d as TvFrozenBN

from ..deform import DeformConv3x3

try:  # timm keeps its own copy of torchvision's frozen BN
    from timm.layers import FrozenBatchNorm2d as TimmFrozenBN
except ImportError:  # pragma: no cover
    TimmFrozenBN = TvFrozenBN

# Eval-mode BatchNorm is the same affine map, so trained-from-scratch backbones fold too.
FROZEN_BN = (TvFrozenBN, TimmFrozenBN, FrozenBatchNormAct2d, nn.BatchNorm2d)
CONVS = (nn.Conv2d, DeformConv3x3)


def _affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A frozen BN as y = x * scale + shift (per channel)."""
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    return scale, bn.bias - bn.running_mean * scale


def _fold_into(conv: nn.Module, bn: nn.Module) -> None:
    scale, shift = _affine(bn)
    conv.weight.data.mul_(scale.view(-1, 1, 1, 1))
    bias = conv.bias.data * scale + shift if conv.bias is not None else shift
    conv.bias = nn.Parameter(bias.clone())


def _replacement(bn: nn.Module) -> nn.Module:
    """What stays of a BN once its affine part is folded: nothing, or its activation."""
    if isinstance(bn, FrozenBatchNormAct2d | BatchNormAct2d):
        return nn.Sequential(bn.drop, bn.act)
    return nn.Identity()


def _last_conv(module: nn.Module) -> nn.Module | None:
    if isinstance(module, CONVS):
        return module
    if isinstance(module, nn.Sequential) and len(module) and isinstance(module[-1], CONVS):
        return module[-1]
    return None


def _foldable(bn: nn.Module) -> bool:
    if isinstance(bn, nn.BatchNorm2d):  # only eval-mode BN with statistics and affine weights
        return not bn.training and bn.track_running_stats and bn.affine
    return isinstance(bn, FROZEN_BN)


def _fold_children(parent: nn.Module) -> int:
    folded = 0
    children = list(parent.named_children())
    for (_, first), (name, second) in zip(children, children[1:]):
        conv = _last_conv(first)
        if conv is not None and _foldable(second):
            _fold_into(conv, second)
            setattr(parent, name, _replacement(second))
            folded += 1
    return folded


def fold_bn_unchecked(model: nn.Module) -> int:
    """Fold every conv -> frozen-BN pair in place; returns how many were folded."""
    return sum(_fold_children(module) for module in list(model.modules()))


@torch.no_grad()
def fold_frozen_bn(
    backbone: nn.Module, example: torch.Tensor, atol: float = 1e-4
) -> tuple[nn.Module, int]:
    """A copy of an eval-mode `backbone` with BN folded, if its outputs stay within `atol`."""
    fused = copy.deepcopy(backbone)
    count = fold_bn_unchecked(fused)
    if count == 0:
        return backbone, 0
    ref, new = backbone(example), fused(example)
    if all(torch.allclose(a, b, atol=atol, rtol=1e-4) for a, b in zip(ref, new)):
        return fused, count
    return backbone, 0
