"""Config -> modules, with explicit constructor arguments."""

from __future__ import annotations

from ..config import ModelConfig
from .backbone import TimmBackbone
from .decoder import IAMDecoder
from .encoder import InstanceContextEncoder
from .sparseinst import SparseInst


def build_model(cfg: ModelConfig) -> SparseInst:
    """Build an untrained SparseInst from its model config (weights are loaded separately)."""
    backbone = TimmBackbone(
        name=cfg.backbone.name, norm=cfg.backbone.norm, dcn_stages=list(cfg.backbone.dcn_stages)
    )
    encoder = InstanceContextEncoder(in_channels=backbone.channels, channels=cfg.encoder.channels)
    d = cfg.decoder
    decoder = IAMDecoder(
        in_channels=cfg.encoder.channels,
        num_classes=cfg.num_classes,
        kind=d.kind,
        num_masks=d.num_masks,
        groups=d.groups,
        inst_dim=d.inst_dim,
        inst_convs=d.inst_convs,
        mask_dim=d.mask_dim,
        mask_convs=d.mask_convs,
        kernel_dim=d.kernel_dim,
        scale_factor=d.scale_factor,
    )
    return SparseInst(
        backbone=backbone,
        encoder=encoder,
        decoder=decoder,
        pixel_mean=cfg.pixel_mean,
        pixel_std=cfg.pixel_std,
    )
