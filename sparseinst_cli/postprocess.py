"""Post-processing as pure functions: scores, mask rescoring, resize back, threshold. No NMS.

The official code resizes every mask twice at full resolution (to the padded input, then to the
original image). Both resizes are bilinear and therefore linear and separable, so here they are
composed into one small banded matrix per axis and applied with matrix products: the same
numbers, a fraction of the work.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass
class Instances:
    """Detections of one image, in query order."""

    masks: torch.Tensor  # bool [n, H, W] at the original image size
    scores: torch.Tensor  # float [n]
    labels: torch.Tensor  # int64 [n], contiguous 0..K-1

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def instance_scores(
    pred_logits: torch.Tensor, pred_objectness: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] class logits, [N, 1] objectness logits -> best score [N] and its label [N]."""
    probs = torch.sqrt(pred_logits.sigmoid() * pred_objectness.sigmoid())
    return probs.max(dim=-1)


def mask_quality(mask_probs: torch.Tensor, mask_threshold: float) -> torch.Tensor:
    """[n, h, w] probabilities -> [n]: mean probability inside the thresholded mask."""
    inside = mask_probs > mask_threshold  # bool: no float copy of the masks
    return (mask_probs * inside).sum((1, 2)) / (inside.sum((1, 2)) + 1e-6)


def bilinear_matrix(
    in_size: int, out_size: int, device: torch.device | None = None
) -> torch.Tensor:
    """[out, in] matrix equal to 1-D bilinear resizing with align_corners=False (PyTorch's rule)."""
    scale = in_size / out_size
    src = ((torch.arange(out_size, device=device, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(
        min=0
    )
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    frac = src - i0
    mat = torch.zeros(out_size, in_size, device=device, dtype=torch.float64)
    rows = torch.arange(out_size, device=device)
    mat.index_put_((rows, i0), 1 - frac, accumulate=True)
    mat.index_put_((rows, i1), frac, accumulate=True)
    return mat


def resize_matrix(low: int, padded: int, valid: int, orig: int, device=None) -> torch.Tensor:
    """[orig, low]: resize low -> padded, keep the first `valid`, resize valid -> orig."""
    to_padded = bilinear_matrix(low, padded, device)[:valid]
    return (bilinear_matrix(valid, orig, device) @ to_padded).float()


def _row_bands(mat: torch.Tensor, chunk: int = 32) -> list[tuple[int, int, int, int]]:
    """Split a banded [out, in] matrix into row chunks with the input columns each one reads."""
    bands = []
    for r0 in range(0, mat.shape[0], chunk):
        used = torch.nonzero(mat[r0 : r0 + chunk].abs().sum(0)).squeeze(1)
        bands.append((r0, min(r0 + chunk, mat.shape[0]), int(used[0]), int(used[-1]) + 1))
    return bands


def resize_masks_thresholded(
    mask_probs: torch.Tensor,
    *,
    padded_hw: tuple[int, int],
    image_hw: tuple[int, int],
    orig_hw: tuple[int, int],
    threshold: float,
) -> torch.Tensor:
    """[n, h/4, w/4] probabilities -> bool [n, H, W] at the original image size.

    Equals: bilinear to the padded size, crop to the resized image, bilinear to the original
    size, `> threshold`. Each output row (column) reads only a few input rows (columns), so
    both products run band by band instead of over the whole matrices.
    """
    dev, dtype = mask_probs.device, mask_probs.dtype
    n, low_h, low_w = mask_probs.shape
    rows, row_bands = _banded_resize(low_h, padded_hw[0], image_hw[0], orig_hw[0], dev, dtype)
    cols, col_bands = _banded_resize(low_w, padded_hw[1], image_hw[1], orig_hw[1], dev, dtype)
    wide = torch.empty((n, low_h, orig_hw[1]), dtype=dtype, device=dev)  # [n, h/4, W]
    for c0, c1, k0, k1 in col_bands:
        wide[:, :, c0:c1] = mask_probs[:, :, k0:k1] @ cols[c0:c1, k0:k1].T
    out = torch.empty((n, orig_hw[0], orig_hw[1]), dtype=torch.bool, device=dev)
    for r0, r1, k0, k1 in row_bands:
        torch.gt(rows[r0:r1, k0:k1] @ wide[:, k0:k1], threshold, out=out[:, r0:r1])
    return out


@functools.lru_cache(maxsize=64)
def _banded_resize(
    low: int, padded: int, valid: int, orig: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
    """`resize_matrix` and its row bands, built once per size (a video or a dataset repeats a
    few sizes). Read-only: callers must not write to the matrix."""
    mat = resize_matrix(low, padded, valid, orig, device).to(dtype)
    return mat, _row_bands(mat)


def postprocess_image(
    pred_logits: torch.Tensor,
    pred_scores: torch.Tensor,
    pred_masks: torch.Tensor,
    *,
    padded_hw: tuple[int, int],
    image_hw: tuple[int, int],
    orig_hw: tuple[int, int],
    cls_threshold: float = 0.005,
    mask_threshold: float = 0.45,
    max_detections: int = 100,
) -> Instances:
    """One image's raw outputs (logits [N,K], [N,1], [N,h,w]) -> Instances at its original size."""
    scores, labels = instance_scores(pred_logits.float(), pred_scores.float())
    keep = torch.nonzero(scores > cls_threshold).squeeze(1)[:max_detections]
    scores, labels = scores[keep], labels[keep]
    probs = pred_masks[keep].float().sigmoid()
    scores = scores * mask_quality(probs, mask_threshold)
    masks = resize_masks_thresholded(
        probs, padded_hw=padded_hw, image_hw=image_hw, orig_hw=orig_hw, threshold=mask_threshold
    )
    return Instances(masks=masks, scores=scores, labels=labels)


def postprocess(
    outputs: dict[str, torch.Tensor],
    *,
    image_sizes: list[tuple[int, int]],
    orig_sizes: list[tuple[int, int]],
    cls_threshold: float = 0.005,
    mask_threshold: float = 0.45,
    max_detections: int = 100,
) -> list[Instances]:
    """Batched raw outputs -> one Instances per image. Padded size is read from pred_masks."""
    padded = tuple(s * 4 for s in outputs["pred_masks"].shape[-2:])
    return [
        postprocess_image(
            outputs["pred_logits"][i],
            outputs["pred_scores"][i],
            outputs["pred_masks"][i],
            padded_hw=padded,
            image_hw=image_sizes[i],
            orig_hw=orig_sizes[i],
            cls_threshold=cls_threshold,
            mask_threshold=mask_threshold,
            max_detections=max_detections,
        )
        for i in range(len(image_sizes))
    ]


def filter_by_score(instances: Instances, min_score: float) -> Instances:
    """Keep the instances whose final (rescored) score is at least `min_score`."""
    keep = instances.scores >= min_score
    return Instances(
        masks=instances.masks[keep], scores=instances.scores[keep], labels=instances.labels[keep]
    )
