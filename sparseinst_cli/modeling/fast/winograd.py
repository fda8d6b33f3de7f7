"""3x3 convolutions as Winograd F(2x2, 3x3) transforms around one batched matmul, on a CPU.

oneDNN computes a bf16 3x3 convolution directly, at the bf16 matmul peak; Winograd's F(2x2, 3x3)
needs 2.25x fewer multiplications: each 4x4 input tile is transformed (additions only), the 16
transformed planes go through one `torch.bmm` with pre-transformed weights, and one [4, 16]
matmul recovers the 2x2 output tiles. The transforms are memory-bound passes, so the trade pays
for wide channels (inference.WINOGRAD_MIN_CHANNELS). Larger
tiles would save more multiplications but not in bf16: F(3x3, 3x3) has 7.5x the error of direct
convolution there (F(2x2, 3x3): 2x).

Every swapped layer is checked against `F.conv2d` on a random input; graphs being captured
(tracing, export), CUDA, and inputs in another dtype than the transformed weights use `F.conv2d`.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import capturing_graph
from .layers import is_plain_3x3

# F(2x2, 3x3) of Lavin & Gray (2016): input transform B^T, kernel transform G, output A^T.
KERNEL_TRANSFORM = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
OUTPUT_TRANSFORM = ((1.0, 1.0, 1.0, 0.0), (0.0, 1.0, -1.0, -1.0))


def transform_weights(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[K, C, 3, 3] conv weights -> [16, C, K] Winograd-domain matrices (tile position i*4+j)."""
    g = torch.tensor(KERNEL_TRANSFORM, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ia,kcab,jb->ijck", g, weight.double(), g)  # computed once, exactly
    return u.reshape(16, weight.shape[1], weight.shape[0]).to(dtype).contiguous()


def _input_tiles(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, int, int]:
    """[N, C, H, W] -> B^T d B of every 4x4 tile (stride 2) as [16, N*hh*ww, C], and hh, ww."""
    n, c, h, w = x.shape
    hh, ww = (h + 1) // 2, (w + 1) // 2
    # Zero padding of 1 (and one more row/column for odd sizes), channels last (C contiguous).
    d = x.new_zeros((n, 2 * hh + 2, 2 * ww + 2, c), dtype=dtype)
    d[:, 1 : h + 1, 1 : w + 1] = x.permute(0, 2, 3, 1)
    cols = [d[:, :, j : j + 2 * ww : 2] for j in range(4)]
    u = d.new_empty((4, n, 2 * hh + 2, ww, c))
    torch.sub(cols[0], cols[2], out=u[0])
    torch.add(cols[1], cols[2], out=u[1])
    torch.sub(cols[2], cols[1], out=u[2])
    torch.sub(cols[1], cols[3], out=u[3])
    rows = [u[:, :, i : i + 2 * hh : 2] for i in range(4)]
    v = d.new_empty((4, 4, n, hh, ww, c))
    torch.sub(rows[0], rows[2], out=v[0])
    torch.add(rows[1], rows[2], out=v[1])
    torch.sub(rows[2], rows[1], out=v[2])
    torch.sub(rows[1], rows[3], out=v[3])
    return v.view(16, n * hh * ww, c), hh, ww


@functools.lru_cache(maxsize=8)
def _output_transform(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A^T m A for all four outputs of a tile as one [4, 16] matrix (row p*2+q, column i*4+j);
    built once per dtype and device (every layer of every image uses it). Read-only."""
    a_t = torch.tensor(OUTPUT_TRANSFORM, dtype=dtype, device=device)
    return torch.kron(a_t, a_t)


def _output_tiles(m: torch.Tensor, n: int, hh: int, ww: int, relu: bool) -> torch.Tensor:
    """[16, N*hh*ww, K] products -> the 2x2 output tiles as [N, 2*hh, 2*ww, K].

    One [4, 16] matmul reads the products once and rounds once (chained elementwise additions
    were slower and rounded bf16 three times); the copy that interleaves the tiles also
    applies the ReLU.
    """
    k = m.shape[-1]
    tiles = torch.mm(_output_transform(m.dtype, m.device), m.view(16, -1))
    tiles = tiles.view(2, 2, n, hh, ww, k).permute(2, 3, 0, 4, 1, 5)
    y = m.new_empty((n, hh, 2, ww, 2, k))
    if relu:
        torch.clamp_min(tiles, 0, out=y)
    else:
        y.copy_(tiles)
    return y.view(n, 2 * hh, 2 * ww, k)


def winograd_conv3x3(
    x: torch.Tensor, transformed: torch.Tensor, bias: torch.Tensor | None, *, relu: bool = False
) -> torch.Tensor:
    """A stride-1, padding-1 3x3 conv of [N, C, H, W] with `transform_weights` output (then a
    ReLU with `relu`), computed in `transformed.dtype`; returns [N, K, H, W], channels-last.
    Inference only (no autograd through the transforms)."""
    n, _, h, w = x.shape
    v, hh, ww = _input_tiles(x, transformed.dtype)
    m = torch.bmm(v, transformed)
    if bias is not None:  # tile position (1, 1) reaches all four outputs with weight +1
        m[5].add_(bias.to(m.dtype))
    y = _output_tiles(m, n, hh, ww, relu)
    if (2 * hh, 2 * ww) != (h, w):  # odd sizes: drop the extra row or column
        y = y[:, :h, :w].contiguous()
    return y.permute(0, 3, 1, 2)


class WinogradConv3x3(nn.Module):
    """A 3x3, stride-1, padding-1 conv (then a ReLU with `relu`) through `winograd_conv3x3` in
    `dtype` on a CPU (for bf16: under autocast), `F.conv2d` with the original weights elsewhere."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype, *, relu: bool = False):
        super().__init__()
        self.relu = relu
        self.weight = nn.Parameter(conv.weight.detach(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach(), False)
        self.register_buffer("transformed", transform_weights(conv.weight.detach(), dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_winograd(x):
            return winograd_conv3x3(x, self.transformed, self.bias, relu=self.relu)
        y = F.conv2d(x, self.weight, self.bias, padding=1)
        return F.relu(y) if self.relu else y

    def _use_winograd(self, x: torch.Tensor) -> bool:
        dtype = self.transformed.dtype
        computes_in = (
            torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        )
        return x.device.type == "cpu" and computes_in == dtype and not capturing_graph()


def eligible(conv: nn.Module, min_channels: int) -> bool:
    return (
        is_plain_3x3(conv)
        and min(conv.in_channels, conv.out_channels) >= min_channels  # not e.g. DCN offsets
        and conv.weight.device.type == "cpu"
    )


@torch.no_grad()
def matches_direct(fast: WinogradConv3x3, conv: nn.Module, dtype: torch.dtype) -> bool:
    """Winograd agrees with direct convolution (`conv`, with its ReLU if fused) in `dtype` on a
    random input of odd size."""
    x = torch.randn(1, fast.weight.shape[1], 13, 18, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        got, want = fast(x).float(), conv(x).float()
    # bf16 keeps 8 significant bits: allow a few of its steps; fp32 differs by rounding only.
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    return bool((got - want).abs().max() <= tolerance * want.abs().max().clamp(min=1))


def use_winograd_convs(module: nn.Module, dtype: torch.dtype, *, min_channels: int = 128) -> int:
    """Swap eligible 3x3 convs (in place) for Winograd ones in `dtype`, each checked against the
    original; a ReLU that follows a conv in an `nn.Sequential` is fused. Returns how many."""
    swapped = 0
    children = list(module.named_children())
    for index, (name, child) in enumerate(children):
        if not eligible(child, min_channels):
            swapped += use_winograd_convs(child, dtype, min_channels=min_channels)
            continue
        after = children[index + 1] if index + 1 < len(children) else None
        relu = isinstance(module, nn.Sequential) and after is not None and type(after[1]) is nn.ReLU
        fast = WinogradConv3x3(child, dtype, relu=relu)
        if matches_direct(fast, nn.Sequential(child, nn.ReLU()) if relu else child, dtype):
            setattr(module, name, fast)
            if relu:
                setattr(module, after[0], nn.Identity())
            swapped += 1
    return swapped
