"""What a training split looks like: instances per image, object sizes, image sizes.

Read from the COCO JSON alone (no image is opened), so it costs a second even for COCO.
`training/adapt.py` sizes the model and the inputs from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .check import load_raw_coco


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
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or ann.get("iscrowd") or ann.get("image_id") not in counts:
            continue
        counts[ann["image_id"]] += 1
        area = ann.get("area")
        if isinstance(area, int | float) and area > 0:
            areas.append(float(area))
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
    )
