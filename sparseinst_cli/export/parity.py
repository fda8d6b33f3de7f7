"""Every export checks itself: the exported graph against the PyTorch model on a real image.

At each size the image is resized to fit inside (h, w) keeping its aspect ratio and padded with
the pixel mean, as `predict` pads; both models get the same tensor. Compared: max |diff| of the
scores and of the mask probabilities (every query, every pixel), and the final instances: the
queries the PyTorch model keeps, their masks resized to the original image and thresholded as
post-processing does, IoU per instance (the table shows the lowest) over the pixels whose
probability is farther than the mask tolerance from the threshold: a pixel within it may flip
with rounding alone, and a picture's bilinear resize, a convex combination, moves no pixel by
more than its inputs move.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.transforms import resize_image
from ..media.samples import PARITY_IMAGE, asset_path
from ..postprocess import resize_masks_thresholded
from ..preprocess import ImageBatch
from .graph import END_TO_END_OUTPUTS, RAW_OUTPUTS, EndToEndHead, RawHead

DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((320, 480), (608, 800))
TOLERANCE = 1e-4  # max |diff| of scores, fp32
# Max |diff| of mask probabilities, fp32. The small head's mask logits carry its location
# prior, a quadratic form that grows to thousands far from an instance: ONNX Runtime's and
# PyTorch's fp32 rounding moved trained models' probabilities by up to 3.7e-4 (rods stand-in;
# 1.1e-4 on crowded); the official variants' stay within 1e-4 (tests/test_export.py).
MASK_TOLERANCE = 1e-3
MIN_IOU = 0.99
# Reduced-precision graphs against the fp32 model: (max |diff| of scores and masks, min mask
# IoU, note).
LOOSER = {
    "fp16": (5e-2, 0.9, "fp16 vs fp32"),
    # 8-bit activations can move a peak anchor, and with it which query finds an object, so
    # int8 graphs are compared object by object: each PyTorch instance's best-matching int8
    # instance, the median IoU of those matches (their AP is measured with `eval`).
    "int8": (float("nan"), 0.5, "int8 vs fp32: median IoU of each instance's best match"),
}

Runner = Callable[[torch.Tensor], dict[str, torch.Tensor]]  # images -> named outputs


def default_image_path() -> Path:
    return asset_path(PARITY_IMAGE)


@dataclass
class ParityRow:
    """The check at one input size; `skipped` rows carry the reason in `note`."""

    size: tuple[int, int]
    score_diff: float = float("nan")
    mask_diff: float = float("nan")
    instances: int = 0
    min_iou: float | None = None  # None: no instance to compare
    tolerance: float = TOLERANCE
    mask_tolerance: float = MASK_TOLERANCE
    min_iou_required: float = MIN_IOU
    reference_ms: float = 0.0
    exported_ms: float = 0.0
    note: str = ""
    mismatch: str = ""  # labels / keep flags that differ (end-to-end layout)
    skipped: bool = False

    @property
    def passed(self) -> bool:
        if self.skipped:
            return True
        iou_ok = self.min_iou is None or self.min_iou >= self.min_iou_required
        if self.tolerance != self.tolerance:  # NaN: compared object by object (int8)
            return iou_ok
        diffs_ok = self.score_diff <= self.tolerance and self.mask_diff <= self.mask_tolerance
        return diffs_ok and iou_ok and not self.mismatch


def parity_batch(image: np.ndarray, hw: tuple[int, int], pixel_mean: list[float]) -> ImageBatch:
    """uint8 RGB [H, W, 3] -> a [1, 3, h, w] batch: resized to fit (aspect kept), mean-padded."""
    big_h, big_w = image.shape[:2]
    scale = min(hw[0] / big_h, hw[1] / big_w)
    nh, nw = min(hw[0], int(big_h * scale + 0.5)), min(hw[1], int(big_w * scale + 0.5))
    resized = torch.from_numpy(np.array(resize_image(image, (nh, nw)))).permute(2, 0, 1).float()
    images = torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1).repeat(1, 1, *hw)
    images[0, :, :nh, :nw] = resized
    return ImageBatch(images=images, image_sizes=[(nh, nw)], orig_sizes=[(big_h, big_w)])


def reference_runner(
    model: nn.Module, *, end_to_end: bool, cls_threshold: float, mask_threshold: float
) -> Runner:
    """The unmodified PyTorch model (adaptive pools and all) with the export's output layout."""
    if end_to_end:
        head: nn.Module = EndToEndHead(
            model, cls_threshold=cls_threshold, mask_threshold=mask_threshold
        )
    else:
        head = RawHead(model)
    names = END_TO_END_OUTPUTS if end_to_end else RAW_OUTPUTS
    device = next(model.parameters()).device

    @torch.inference_mode()
    def run(images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in zip(names, head.eval()(images.to(device)))}

    return run


def _mask_ious(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """bool [n, H, W] x2 -> IoU per instance [n] (1.0 where both are empty)."""
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def compare(
    ref: dict[str, torch.Tensor],
    got: dict[str, torch.Tensor],
    batch: ImageBatch,
    *,
    cls_threshold: float,
    mask_threshold: float,
    tolerance: float = TOLERANCE,
    mask_tolerance: float = MASK_TOLERANCE,
    min_iou: float = MIN_IOU,
) -> ParityRow:
    """One image's outputs of both models -> a ParityRow (see the module doc)."""
    got = {k: v.float() if v.is_floating_point() else v for k, v in got.items()}
    row = ParityRow(size=batch.padded_size, tolerance=tolerance, mask_tolerance=mask_tolerance,
                    min_iou_required=min_iou)
    row.score_diff = float((ref["scores"] - got["scores"]).abs().max())
    row.mask_diff = float((ref["masks"] - got["masks"]).abs().max())
    if "keep" in ref:  # end-to-end layout
        keep = ref["keep"][0]
        for name in ("labels", "keep"):
            n = int((ref[name] != got[name]).sum())
            if n:
                row.mismatch += f"{name} differ on {n} queries; "
    else:
        keep = ref["scores"][0].max(-1).values > cls_threshold
    idx = torch.nonzero(keep).squeeze(1)
    row.instances = int(idx.numel())
    if row.instances:
        geometry = dict(
            padded_hw=batch.padded_size, image_hw=batch.image_sizes[0],
            orig_hw=batch.orig_sizes[0], threshold=mask_threshold,
        )
        a = resize_masks_thresholded(ref["masks"][0][idx], **geometry)
        if tolerance != tolerance:  # object by object: each instance's best match, median
            theirs = got["scores"][0].max(-1).values > cls_threshold
            b = resize_masks_thresholded(got["masks"][0][theirs], **geometry)
            row.score_diff = row.mask_diff = float("nan")
            a, b = a[a.flatten(1).any(1)], b[b.flatten(1).any(1)]  # empty masks match nothing
            if len(a):
                row.min_iou = float(_best_match_ious(a, b).median()) if len(b) else 0.0
        else:
            b = resize_masks_thresholded(got["masks"][0][idx], **geometry)
            undecided = _near_threshold(ref["masks"][0][idx], geometry, mask_tolerance)
            row.min_iou = float(_mask_ious(a & ~undecided, b & ~undecided).min())
    return row


def _near_threshold(probs: torch.Tensor, geometry: dict, tolerance: float) -> torch.Tensor:
    """bool [n, H, W]: resized pixels within `tolerance` of the threshold (above threshold -
    tolerance, not above threshold + tolerance)."""
    level = geometry["threshold"]
    above_low = resize_masks_thresholded(probs, **{**geometry, "threshold": level - tolerance})
    above_high = resize_masks_thresholded(probs, **{**geometry, "threshold": level + tolerance})
    return above_low & ~above_high


def _best_match_ious(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """bool [n, H, W], [m, H, W] -> [n]: each of `a`'s masks' highest IoU with one of `b`'s."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return (inter / union.clamp(min=1)).max(1).values


def check_parity(
    reference: Runner,
    exported: Runner,
    image: np.ndarray,
    sizes: tuple[tuple[int, int], ...],
    *,
    pixel_mean: list[float],
    cls_threshold: float,
    mask_threshold: float,
    precision: str = "fp32",
) -> list[ParityRow]:
    """Run both models at each size and compare (fp16 and int8 exports against the fp32 model,
    loosened)."""
    tolerance, min_iou, note = LOOSER.get(precision, (TOLERANCE, MIN_IOU, ""))
    mask_tolerance = tolerance if precision in LOOSER else MASK_TOLERANCE
    rows = []
    for hw in sizes:
        batch = parity_batch(image, hw, pixel_mean)
        t0 = time.perf_counter()
        ref = reference(batch.images)
        t1 = time.perf_counter()
        got = exported(batch.images)
        t2 = time.perf_counter()
        row = compare(
            ref, got, batch, cls_threshold=cls_threshold, mask_threshold=mask_threshold,
            tolerance=tolerance, mask_tolerance=mask_tolerance, min_iou=min_iou,
        )
        row.reference_ms, row.exported_ms = (t1 - t0) * 1000, (t2 - t1) * 1000
        row.note = note
        rows.append(row)
    return rows


def skipped_rows(sizes: tuple[tuple[int, int], ...], reason: str) -> list[ParityRow]:
    return [ParityRow(size=hw, skipped=True, note=reason) for hw in sizes]
