"""Post-processing as pure functions: scores, mask rescoring, resize back, threshold. No NMS.

The official code resizes every mask twice at full resolution (to the padded input, then to the
original image). Both resizes are bilinear and therefore linear and separable, so here they are
composed into one small banded matrix per axis and applied with matrix products: the same
numbers, a fraction of the work.
"""

from __future__ import annotations

import bisect
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
    size, `> threshold`. An output is a convex combination of a few inputs, so it can exceed
    the threshold only next to an input that does: each mask is computed only over the box
    its hot inputs reach (most of an image's 100 masks cover a small part of it), and masks
    whose box is large run together, band by band (each output row or column reads only a
    few input rows or columns).
    """
    dev, dtype = mask_probs.device, mask_probs.dtype
    n, low_h, low_w = mask_probs.shape
    rows = _banded_resize(low_h, padded_hw[0], image_hw[0], orig_hw[0], dev, dtype)
    cols = _banded_resize(low_w, padded_hw[1], image_hw[1], orig_hw[1], dev, dtype)
    # a margin below the threshold: weights that sum to 1 + ulp must not hide an output
    level = threshold - 1e-6
    row_span = _hot_span(mask_probs.amax(2) > level)  # [n, 2] each, inclusive
    col_span = _hot_span(mask_probs.amax(1) > level)
    box_h, box_w = row_span[:, 1] - row_span[:, 0] + 1, col_span[:, 1] - col_span[:, 0] + 1
    # multiply-adds of the two dense products over a mask's box against the banded ones'
    out_h, out_w = box_h * orig_hw[0] / low_h, box_w * orig_hw[1] / low_w
    box_cost = box_h * box_w * out_w + out_h * box_h * out_w
    banded = box_cost > cols.band_cost * low_h + rows.band_cost * orig_hw[1]
    large = torch.nonzero(banded)
    out_shape = (n, orig_hw[0], orig_hw[1])
    if len(large) == n:  # every mask is spread over the image (no zero fill needed)
        return _banded_threshold(mask_probs, rows, cols, threshold, out_shape)
    out = torch.zeros(out_shape, dtype=torch.bool, device=dev)
    if len(large):
        large = large.squeeze(1)
        out[large] = _banded_threshold(mask_probs[large], rows, cols, threshold,
                                       (len(large), *out_shape[1:]))
    spans = torch.cat([row_span, col_span], 1).tolist()
    for k, ((i0, i1, j0, j1), done) in enumerate(zip(spans, banded.tolist(), strict=True)):
        if i0 > i1 or done:
            continue  # no hot input (all False), or done above
        row_reach, col_reach = rows.reach(i0, i1), cols.reach(j0, j1)
        if row_reach is None or col_reach is None:
            continue
        (y0, y1, a0, a1), (x0, x1, b0, b1) = row_reach, col_reach
        block = mask_probs[k, a0:a1, b0:b1] @ cols.matrix[x0:x1, b0:b1].T
        block = rows.matrix[y0:y1, a0:a1] @ block
        torch.gt(block, threshold, out=out[k, y0:y1, x0:x1])
    return out


def _hot_span(hot: torch.Tensor) -> torch.Tensor:
    """[n, L] bool -> [n, 2] first and last hot index (first > last when none is hot)."""
    length = hot.shape[1]
    first = torch.where(hot.any(1), hot.byte().argmax(1), length)  # hot: [n, L], small
    last = length - 1 - hot.flip(1).byte().argmax(1)
    return torch.stack([first, last], 1)


def _banded_threshold(
    mask_probs: torch.Tensor, rows: _Resize, cols: _Resize, threshold: float,
    out_shape: tuple[int, int, int],
) -> torch.Tensor:
    """Both resizes over whole masks, band by band, then `> threshold`: bool `out_shape`."""
    n, low_h, _ = mask_probs.shape
    wide = torch.empty((n, low_h, out_shape[2]), dtype=mask_probs.dtype, device=mask_probs.device)
    for c0, c1, k0, k1 in cols.bands:
        wide[:, :, c0:c1] = mask_probs[:, :, k0:k1] @ cols.matrix[c0:c1, k0:k1].T
    out = torch.empty(out_shape, dtype=torch.bool, device=mask_probs.device)
    for r0, r1, k0, k1 in rows.bands:
        torch.gt(rows.matrix[r0:r1, k0:k1] @ wide[:, k0:k1], threshold, out=out[:, r0:r1])
    return out


@dataclass(frozen=True)
class _Resize:
    """One axis's resize matrix [out, in] with what the band-wise products need."""

    matrix: torch.Tensor
    bands: list[tuple[int, int, int, int]]  # (out0, out1, in0, in1) per chunk of output rows
    first: list[int]  # per output row: its first and last input with a non-zero weight
    last: list[int]
    band_cost: int  # multiply-adds of a banded product per vector it resizes

    def reach(self, i0: int, i1: int) -> tuple[int, int, int, int] | None:
        """Inputs i0..i1 (inclusive) -> the output rows [o0, o1) that read any of them and the
        inputs [a0, a1) those outputs read; None when no output does (cropped padding)."""
        o0 = bisect.bisect_left(self.last, i0)
        o1 = bisect.bisect_right(self.first, i1)
        if o0 >= o1:
            return None
        return o0, o1, self.first[o0], self.last[o1 - 1] + 1


@functools.lru_cache(maxsize=64)
def _banded_resize(
    low: int, padded: int, valid: int, orig: int, device: torch.device, dtype: torch.dtype
) -> _Resize:
    """`resize_matrix` and its bands, built once per size (a video or a dataset repeats a few
    sizes). Read-only: callers must not write to the matrix."""
    mat = resize_matrix(low, padded, valid, orig, device).to(dtype)
    nonzero = mat != 0
    first = nonzero.byte().argmax(1)
    last = mat.shape[1] - 1 - nonzero.flip(1).byte().argmax(1)
    bands = _row_bands(mat)
    cost = sum((r1 - r0) * (k1 - k0) for r0, r1, k0, k1 in bands)
    return _Resize(mat, bands, first.tolist(), last.tolist(), cost)


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
    min_score: float = 0.0,
) -> Instances:
    """One image's raw outputs (logits [N,K], [N,1], [N,h,w]) -> Instances at its original size.
    `min_score` > 0 drops instances whose final (rescored) score is lower before their masks
    are resized (`predict --conf`); evaluation keeps them all."""
    scores, labels = instance_scores(pred_logits.float(), pred_scores.float())
    keep = torch.nonzero(scores > cls_threshold).squeeze(1)[:max_detections]
    scores, labels = scores[keep], labels[keep]
    probs = pred_masks[keep].float().sigmoid()
    scores = scores * mask_quality(probs, mask_threshold)
    if min_score > 0:
        confident = scores >= min_score
        scores, labels, probs = scores[confident], labels[confident], probs[confident]
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
    min_score: float = 0.0,
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
            min_score=min_score,
        )
        for i in range(len(image_sizes))
    ]
