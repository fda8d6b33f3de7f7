"""Post-processing: the mask resize against the official two-step F.interpolate, score filters."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparseinst_cli.postprocess import postprocess_image, resize_masks_thresholded


def official_resize(probs: torch.Tensor, padded_hw, image_hw, orig_hw, threshold) -> torch.Tensor:
    """The official code: bilinear to the padded input, crop, bilinear to the original size."""
    up = F.interpolate(probs[:, None], size=padded_hw, mode="bilinear", align_corners=False)
    up = up[:, :, : image_hw[0], : image_hw[1]]
    return F.interpolate(up, size=orig_hw, mode="bilinear", align_corners=False)[:, 0] > threshold


def blobs(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """[n, h, w] probabilities: compact blobs of many sizes, a few masks over the whole image,
    some empty ones, and some touching the borders."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing="ij")
    cy, cx = torch.rand(n, 1, 1, generator=g) * h, torch.rand(n, 1, 1, generator=g) * w
    radius = 0.5 + torch.rand(n, 1, 1, generator=g) * max(h, w) / 3
    probs = (6 - 12 * ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt() / radius).sigmoid()
    probs[: n // 8] = torch.rand(n // 8, h, w, generator=g)  # spread over the image
    probs[-3:] = 0.1  # no pixel above any threshold used here
    return probs


@pytest.mark.parametrize(("low", "padded", "image", "orig"), [
    ((40, 40), (160, 160), (160, 160), (160, 160)),
    ((30, 40), (120, 160), (113, 160), (300, 425)),  # padded, then upscaled to the original
    ((32, 24), (128, 96), (128, 90), (64, 45)),  # downscaled to the original
])
def test_resize_equals_the_official_two_interpolations(low, padded, image, orig):
    probs = blobs(40, *low, seed=sum(orig))
    got = resize_masks_thresholded(probs, padded_hw=padded, image_hw=image, orig_hw=orig,
                                   threshold=0.45)
    want = official_resize(probs, padded, image, orig, 0.45)
    assert got.shape == want.shape and got.dtype == torch.bool
    # last-bit differences of two summation orders may flip a pixel sitting on the threshold
    assert (got != want).sum() <= want.numel() * 1e-5
    assert not got[-3:].any() and got[:-3].flatten(1).any(1).float().mean() > 0.8


def test_box_and_banded_paths_agree():
    """Compact masks take the per-mask box path, spread ones the banded path: same pixels."""
    probs = blobs(24, 48, 64, seed=3)
    kwargs = dict(padded_hw=(192, 256), image_hw=(190, 250), orig_hw=(380, 500), threshold=0.3)
    together = resize_masks_thresholded(probs, **kwargs)
    one_by_one = torch.cat([resize_masks_thresholded(probs[i:i + 1], **kwargs)
                            for i in range(len(probs))])
    spread = torch.cat([resize_masks_thresholded(probs[:3], **kwargs), together[3:]])
    assert torch.equal(together, one_by_one) and torch.equal(together, spread)


def test_min_score_drops_before_the_resize_what_a_later_filter_would():
    g = torch.Generator().manual_seed(0)
    logits, objectness = torch.randn(50, 4, generator=g), torch.randn(50, 1, generator=g)
    masks = torch.logit(blobs(50, 20, 24, seed=1).clamp(1e-4, 1 - 1e-4))
    sizes = dict(padded_hw=(80, 96), image_hw=(80, 90), orig_hw=(160, 180))
    every = postprocess_image(logits, objectness, masks, **sizes)
    kept = postprocess_image(logits, objectness, masks, **sizes, min_score=0.2)
    confident = every.scores >= 0.2
    assert 0 < len(kept) < len(every)
    assert torch.equal(kept.scores, every.scores[confident])
    assert torch.equal(kept.labels, every.labels[confident])
    assert torch.equal(kept.masks, every.masks[confident])
