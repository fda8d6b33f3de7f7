"""Config -> modules, with explicit constructor arguments."""

from __future__ import annotations

from ..config import ModelConfig
from ..errors import UserError
from .backbone import TimmBackbone
from .decoder import DECODER_KINDS, IAMDecoder
from .encoder import InstanceContextEncoder
from .sparseinst import SparseInst

MASK_STRIDES = (4, 8)


def check_model_config(cfg: ModelConfig) -> None:
    """Raise UserError for decoder settings no model can be built from (a pure check, so that
    training can refuse them before it creates its run folder)."""
    d = cfg.decoder
    if d.kind not in DECODER_KINDS:
        raise UserError(f"decoder kind '{d.kind}' is not one of {', '.join(DECODER_KINDS)}")
    if d.mask_stride not in MASK_STRIDES:
        raise UserError(f"model.decoder.mask_stride must be 4 or 8, got {d.mask_stride}")
    if d.query_anchors and d.peak_anchors:
        raise UserError("model.decoder.query_anchors (learned points) and peak_anchors (heatmap "
                        "peaks) are two kinds of anchors: set one of them false")
    if d.peak_window < 1 or d.peak_window % 2 == 0:
        raise UserError(f"model.decoder.peak_window must be an odd number of heatmap cells "
                        f"(3, 5, 7, ...), got {d.peak_window}")


def build_model(cfg: ModelConfig) -> SparseInst:
    """Build an untrained SparseInst from its model config (weights are loaded separately)."""
    check_model_config(cfg)
    d = cfg.decoder
    fine = d.mask_stride == 4
    backbone = TimmBackbone(
        name=cfg.backbone.name, norm=cfg.backbone.norm, dcn_stages=list(cfg.backbone.dcn_stages),
        strides=(4, 8, 16, 32) if fine else (8, 16, 32),
    )
    encoder = InstanceContextEncoder(
        in_channels=backbone.channels[-3:], channels=cfg.encoder.channels
    )
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
        fine_channels=backbone.channels[0] if fine else 0,
        centre_prior=d.centre_prior,
        query_anchors=d.query_anchors,
        peak_anchors=d.peak_anchors,
        object_shape=d.object_shape,
        peak_window=d.peak_window,
    )
    return SparseInst(
        backbone=backbone,
        encoder=encoder,
        decoder=decoder,
        pixel_mean=cfg.pixel_mean,
        pixel_std=cfg.pixel_std,
    )
