"""What a training split looks like: instances per image, object sizes and shapes, image sizes.

Read from the COCO JSON alone (no image is opened; shapes from a sample of the masks), so it
costs seconds even for COCO. `training/adapt.py` sizes the model and the inputs from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_util

from .check import load_raw_coco

SHAPE_SAMPLE = 2000  # annotations whose shape is measured, spread over the split


@dataclass(frozen=True)
class SplitStats:
    """Per-split figures; sizes in pixels of the original images."""

    num_images: int
    max_instances: int  # non-crowd instances in the densest image
    mean_instances: float
    median_object_size: float  # sqrt of the mask area
    small_fraction: float  # objects under 32 x 32 pixels (COCO "small")
    median_short_side: float
    max_long_side: int
    # the minor and major axes of each mask's inertia ellipse (a W x L rod: about 1.15 W and
    # 1.15 L); nan when no mask could be measured
    median_width: float = math.nan
    median_elongation: float = math.nan  # major / minor

    @property
    def object_width(self) -> float:
        """How wide objects are: the median minor axis, else the square root of the area."""
        return self.median_width if math.isfinite(self.median_width) else self.median_object_size


def split_stats(annotations: Path) -> SplitStats:
    """Statistics of the non-crowd annotations of one COCO instances file."""
    data = load_raw_coco(annotations)
    sizes = {
        img["id"]: (int(img["height"]), int(img["width"]))
        for img in data["images"]
        if isinstance(img, dict) and {"id", "height", "width"} <= img.keys()
    }
    counts = dict.fromkeys(sizes, 0)
    areas = []
    kept = []
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or ann.get("iscrowd") or ann.get("image_id") not in counts:
            continue
        counts[ann["image_id"]] += 1
        kept.append(ann)
        area = ann.get("area")
        if isinstance(area, int | float) and area > 0:
            areas.append(float(area))
    axes = [axes_of(ann, sizes[ann["image_id"]])
            for ann in kept[:: max(1, len(kept) // SHAPE_SAMPLE)]]
    axes = np.asarray([a for a in axes if a is not None]).reshape(-1, 2)
    if not sizes:
        return SplitStats(0, 0, 0.0, math.nan, math.nan, math.nan, 0)
    area = np.asarray(areas) if areas else np.asarray([math.nan])
    hw = np.asarray(list(sizes.values()))
    return SplitStats(
        num_images=len(sizes),
        max_instances=max(counts.values()),
        mean_instances=float(np.mean(list(counts.values()))),
        median_object_size=float(np.median(np.sqrt(area))),
        small_fraction=float(np.mean(area < 32 * 32)),
        median_short_side=float(np.median(hw.min(1))),
        max_long_side=int(hw.max()),
        median_width=float(np.median(axes[:, 0])) if len(axes) else math.nan,
        median_elongation=float(np.median(axes[:, 1] / axes[:, 0])) if len(axes) else math.nan,
    )


def axes_of(ann: dict, hw: tuple[int, int]) -> tuple[float, float] | None:
    """(minor, major) axis in px of an annotation's inertia ellipse (4 sqrt of the second
    moments' eigenvalues), from its polygons or RLE; None when it has no measurable mask."""
    seg = ann.get("segmentation")
    try:
        if isinstance(seg, list):
            parts = [np.asarray(p, np.float32).reshape(-1, 2) for p in seg if len(p) >= 6]
            moments = [cv2.moments(p) for p in parts]
        elif isinstance(seg, dict):
            rle = mask_util.frPyObjects(seg, *hw) if isinstance(seg.get("counts"), list) else seg
            moments = [cv2.moments(mask_util.decode(rle), binaryImage=True)]
        else:
            return None
    except (ValueError, TypeError, cv2.error):
        return None
    m = {k: sum(mo[k] for mo in moments) for k in ("m00", "m10", "m01", "m20", "m02", "m11")}
    if not m["m00"] > 1.0:
        return None
    cx, cy = m["m10"] / m["m00"], m["m01"] / m["m00"]
    cov = np.array([[m["m20"] / m["m00"] - cx * cx, m["m11"] / m["m00"] - cx * cy],
                    [m["m11"] / m["m00"] - cx * cy, m["m02"] / m["m00"] - cy * cy]])
    low, high = np.linalg.eigvalsh(cov)
    if not (np.isfinite(low) and low > 0):
        return None
    return 4 * math.sqrt(low), 4 * math.sqrt(high)
