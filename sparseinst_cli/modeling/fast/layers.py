"""Which layers the inference rewrites may touch."""

from __future__ import annotations

from torch import nn


def is_stride1_3x3(conv: nn.Module) -> bool:
    """Exactly an `nn.Conv2d` (no subclass), 3x3, stride 1, no dilation, numeric zero padding."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def is_plain_3x3(conv: nn.Module) -> bool:
    """A stride-1 3x3 conv with padding 1 and no groups: same-size output, one dense filter bank."""
    return is_stride1_3x3(conv) and conv.padding == (1, 1) and conv.groups == 1
