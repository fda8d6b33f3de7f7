"""The SparseInst network: normalise -> backbone -> encoder -> decoder."""

from __future__ import annotations

import torch
from torch import nn


class SparseInst(nn.Module):
    """Raw RGB images (0-255, padded with the pixel mean) -> raw decoder outputs.

    Normalisation lives inside the network, so exported graphs and every command share it;
    padding with the mean makes the padded area exactly 0 after normalisation, as the
    official zero-padding of normalised images does.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        encoder: nn.Module,
        decoder: nn.Module,
        pixel_mean: list[float],
        pixel_std: list[float],
        size_divisibility: int = 32,
    ):
        super().__init__()
        self.backbone = backbone
        self.encoder = encoder
        self.decoder = decoder
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), False)

    def with_parts(
        self, *, backbone: nn.Module | None = None, encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
    ) -> SparseInst:
        """A new network with the given parts, sharing this one's others (inference rewrites)."""
        return SparseInst(
            backbone=self.backbone if backbone is None else backbone,
            encoder=self.encoder if encoder is None else encoder,
            decoder=self.decoder if decoder is None else decoder,
            pixel_mean=self.pixel_mean.flatten().tolist(),
            pixel_std=self.pixel_std.flatten().tolist(),
            size_divisibility=self.size_divisibility,
        ).to(self.pixel_mean.device)

    @property
    def num_classes(self) -> int:
        return self.decoder.inst_branch.cls_score.out_features

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [B, 3, Hp, Wp] (Hp, Wp multiples of 32) -> dict of
        pred_logits [B,N,K], pred_scores [B,N,1], pred_masks [B,N,Hp/4,Wp/4] (all logits)."""
        x = (images - self.pixel_mean) / self.pixel_std
        features = self.backbone(x)
        if len(features) == 4:  # strides 4, 8, 16, 32: the mask branch reads the stride-4 map
            return self.decoder(self.encoder(features[1:]), features[0])
        return self.decoder(self.encoder(features))
