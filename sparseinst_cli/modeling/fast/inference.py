"""Make a trained SparseInst fast for inference without changing its outputs."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..decoder import IAMDecoder
from ..encoder import InstanceContextEncoder
from ..sparseinst import SparseInst
from .first_convs import share_first_convs
from .fuse import fold_frozen_bn
from .nnpack import openmp_spins_briefly, use_nnpack_convs
from .winograd import use_winograd_convs

# Narrowest 3x3 conv that Winograd runs faster than oneDNN (bf16) or than oneDNN and NNPACK
# (fp32); in fp32 NNPACK wins up to 256 channels.
WINOGRAD_MIN_CHANNELS = {torch.bfloat16: 128, torch.float32: 512}


class ContiguousOutput(nn.Module):
    """Runs a conv on channels-last input (oneDNN's fastest) and hands its output on in NCHW,
    the memory NNPACK works in; the encoder's laterals narrow 512-2048 channels to 256 first,
    which makes this the cheapest place to change layout."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).contiguous()


@torch.no_grad()
def optimize_for_inference(
    model: SparseInst,
    *,
    channels_last: bool = True,
    nnpack: bool = False,
    winograd: bool = False,
    autocast_dtype: torch.dtype = torch.float32,
) -> SparseInst:
    """Fold BN into the backbone's convs (checked numerically), run the backbone in channels-last
    memory (oneDNN's fastest), and with `nnpack` (fp32 on a CPU) the wide 3x3 convs through
    NNPACK's Winograd kernels (each layer checked against direct convolution): those of the
    encoder and decoder, and the backbone's 128-256-channel ones where OpenMP spins briefly.
    With either, the decoder's two branches start with one merged conv (`share_first_convs`).
    With `winograd` (a CPU), 3x3 convs go through Winograd F(2x2, 3x3) where it beats the other
    kernels (each layer checked against direct convolution): those 128+ channels wide in bf16,
    the 512+-channel ones in fp32.
    For a network that will run under autocast to `autocast_dtype` (bf16, fp16), the conv and
    linear weights are stored in that dtype once instead of being cast on every forward pass.

    Returns a new network; `model` itself (possibly still training) is left as it is.
    """
    model.eval()
    device = model.pixel_mean.device
    example = torch.randn(1, 3, 128, 128, device=device)
    backbone, _ = fold_frozen_bn(model.backbone, example)
    if backbone is model.backbone:  # nothing folded (no frozen BN): still rewritten below
        backbone = copy.deepcopy(backbone)
    encoder, decoder = copy.deepcopy(model.encoder), copy.deepcopy(model.decoder)
    if (nnpack or winograd) and isinstance(decoder, IAMDecoder):
        share_first_convs(decoder)  # one wide 3x3 conv where both branches start
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    if nnpack and use_nnpack_convs(encoder) + use_nnpack_convs(decoder):
        if channels_last and isinstance(encoder, InstanceContextEncoder):
            encoder.fpn_laterals = nn.ModuleList(map(ContiguousOutput, encoder.fpn_laterals))
        if openmp_spins_briefly():  # else the layout changes cost more than NNPACK saves
            use_nnpack_convs(backbone, max_channels=256, channels_last_output=channels_last)
    elif channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
        decoder = decoder.to(memory_format=torch.channels_last)
    if winograd and autocast_dtype in WINOGRAD_MIN_CHANNELS:
        for part in (backbone, encoder, decoder):
            use_winograd_convs(
                part, autocast_dtype, min_channels=WINOGRAD_MIN_CHANNELS[autocast_dtype]
            )
    if autocast_dtype != torch.float32:
        for part in (backbone, encoder, decoder):
            store_autocast_weights(part, autocast_dtype)
    return model.with_parts(backbone=backbone, encoder=encoder, decoder=decoder).eval()


def store_autocast_weights(module: nn.Module, dtype: torch.dtype) -> None:
    """Store the parameters of `nn.Conv2d` and `nn.Linear` layers in `dtype`: autocast runs these
    layers in `dtype` anyway, and rounds fp32 weights the same way, so the outputs are unchanged
    while each forward pass saves the casts. Other
    layers (norms, deformable convs) keep fp32 parameters."""
    for layer in module.modules():
        if type(layer) in (nn.Conv2d, nn.Linear):  # exactly: subclasses may use their weights
            layer.to(dtype)  # outside autocast-aware ops
