"""Inference preprocessing: resize as the official pipeline does, batch, pad to a multiple of 32.

The network normalises internally (see SparseInst.forward), so images are padded with the pixel
mean: after normalisation the padding is exactly 0, as in the official code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .data.transforms import PAD_MULTIPLE, resize_image, shortest_edge_size


@dataclass
class ImageBatch:
    """A padded batch and the geometry post-processing needs to undo it."""

    images: torch.Tensor  # [B, 3, Hp, Wp] float32 RGB 0-255, padded with the pixel mean
    image_sizes: list[tuple[int, int]]  # resized (h, w) of each image inside the padding
    orig_sizes: list[tuple[int, int]]  # original (H, W) of each image

    @property
    def padded_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])


def resize_for_test(image: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> resized so the short side is `min_size`, long side <= `max_size`."""
    h, w = image.shape[:2]
    return resize_image(image, shortest_edge_size(h, w, min_size, max_size))


def pad_batch(
    images: list[torch.Tensor], pad_value: list[float], size_divisibility: int = PAD_MULTIPLE
) -> torch.Tensor:
    """[3, h_i, w_i] tensors -> [B, 3, Hp, Wp] float32, bottom/right padded with `pad_value`."""
    max_h = max(int(im.shape[-2]) for im in images)
    max_w = max(int(im.shape[-1]) for im in images)
    hp = -(-max_h // size_divisibility) * size_divisibility
    wp = -(-max_w // size_divisibility) * size_divisibility
    fill = torch.tensor(pad_value, dtype=torch.float32).view(3, 1, 1)
    batch = fill.expand(len(images), 3, hp, wp).clone()
    for out, im in zip(batch, images):
        out[:, : im.shape[-2], : im.shape[-1]] = im
    return batch


def prepare_images(
    images: list[np.ndarray], *, min_size: int, max_size: int, pixel_mean: list[float]
) -> ImageBatch:
    """Original uint8 RGB images [H, W, 3] -> an ImageBatch ready for the network."""
    resized = [resize_for_test(im, min_size, max_size) for im in images]
    tensors = [torch.from_numpy(np.array(r)).permute(2, 0, 1).float() for r in resized]
    return ImageBatch(
        images=pad_batch(tensors, pixel_mean),
        image_sizes=[tuple(r.shape[:2]) for r in resized],
        orig_sizes=[tuple(im.shape[:2]) for im in images],
    )
