"""3x3 convolutions through NNPACK's Winograd kernels, for single images on a CPU.

oneDNN computes a 3x3 convolution directly; NNPACK's Winograd transform needs about 4x fewer
multiplications, so the 256-channel 3x3 convs of the encoder and decoder run faster on a CPU
in fp32 (PyTorch itself only routes batches of 16 or more to NNPACK). Outputs differ from
direct convolution by rounding only (about 1e-6 relative); every layer is checked against
`F.conv2d` when it is swapped in, and anything NNPACK cannot do falls back to `F.conv2d`.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import capturing_graph
from .layers import is_stride1_3x3

# Relative difference to direct convolution above which a layer is left to oneDNN.
MAX_RELATIVE_ERROR = 1e-4


def openmp_spins_briefly() -> bool:
    """Whether idle OpenMP threads give the cores up soon (GOMP_SPINCOUNT / OMP_WAIT_POLICY,
    which `sparseinst_cli` sets before torch loads). By default libgomp threads spin for
    milliseconds after each op and slow NNPACK's own threads, which then pays only where it
    saves the most (the encoder and decoder), not in the backbone."""
    spin = os.environ.get("GOMP_SPINCOUNT", "")
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE" or (
        spin.isdigit() and int(spin) <= 10_000
    )


def nnpack_available() -> bool:
    """Also initialises NNPACK, which its convolution needs before the first call."""
    try:
        return bool(torch._nnpack_available())
    except (AttributeError, RuntimeError):
        return False


class NnpackConv3x3(nn.Module):
    """A stride-1 3x3 conv: NNPACK for fp32 CPU inputs (one call per group), `F.conv2d` otherwise.

    NNPACK works in NCHW memory: inputs are made contiguous, and outputs come back in NCHW, or
    in channels-last with `channels_last_output` (inside a channels-last backbone). Autocast
    (bf16), CUDA, tracing and export use `F.conv2d`, so graphs and reduced precision are unchanged.
    """

    def __init__(self, conv: nn.Conv2d, *, channels_last_output: bool = False):
        super().__init__()
        self.channels_last_output = channels_last_output
        self.weight = nn.Parameter(conv.weight.detach().contiguous(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach(), False)
        self.padding = tuple(conv.padding)
        self.groups = conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._use_nnpack(x):
            return F.conv2d(x, self.weight, self.bias, padding=self.padding, groups=self.groups)
        bias = self.bias if self.bias is not None else x.new_zeros(self.weight.shape[0])
        if self.groups == 1:
            y = torch._nnpack_spatial_convolution(x.contiguous(), self.weight, bias, self.padding)
        else:  # oneDNN's grouped conv is slow on NCHW inputs; NNPACK per group is faster
            parts = zip(x.chunk(self.groups, 1), self.weight.chunk(self.groups),
                        bias.chunk(self.groups))
            y = torch.cat([
                torch._nnpack_spatial_convolution(xg.contiguous(), wg, bg, self.padding)
                for xg, wg, bg in parts
            ], dim=1)
        return y.contiguous(memory_format=torch.channels_last) if self.channels_last_output else y

    def _use_nnpack(self, x: torch.Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and not capturing_graph()
        )


def eligible(conv: nn.Module, min_channels: int, max_channels: int) -> bool:
    return (
        is_stride1_3x3(conv)
        and min_channels <= conv.in_channels <= max_channels
        and conv.in_channels // conv.groups >= 32  # grouped: one NNPACK call per group
        and conv.weight.device.type == "cpu"
        and conv.weight.dtype == torch.float32
    )


@torch.no_grad()
def matches_direct(fast: NnpackConv3x3, conv: nn.Conv2d) -> bool:
    """NNPACK runs and agrees with direct convolution on a random input for this layer."""
    x = torch.randn(1, conv.in_channels, 20, 24, generator=torch.Generator().manual_seed(0))
    try:
        got = fast(x)
    except RuntimeError:
        return False
    want = conv(x)
    return bool((got - want).abs().max() <= MAX_RELATIVE_ERROR * want.abs().max().clamp(min=1))


def use_nnpack_convs(
    module: nn.Module, *, min_channels: int = 128, max_channels: int = 384,
    channels_last_output: bool = False,
) -> int:
    """Swap eligible 3x3 convs (in place) for NNPACK ones; returns how many were swapped.

    Only convs with `min_channels` to `max_channels` input channels: on 2-16 cores narrower ones
    gain too little to pay for a change of memory layout, and 512-channel ones run slower.
    """
    if not nnpack_available():
        return 0
    swapped = 0
    for name, child in module.named_children():
        if eligible(child, min_channels, max_channels):
            fast = NnpackConv3x3(child, channels_last_output=channels_last_output)
            if matches_direct(fast, child):
                setattr(module, name, fast)
                swapped += 1
        else:
            swapped += use_nnpack_convs(
                child, min_channels=min_channels, max_channels=max_channels,
                channels_last_output=channels_last_output,
            )
    return swapped
