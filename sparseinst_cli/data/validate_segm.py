"""The segmentation of one annotation, validated before anything is rasterised from it.

`clean_segmentation` sorts each flaw into an error (the data is broken: NaN or far-away
coordinates, RLE counts that do not cover the image) or a harmless repair that the peers
(detectron2, Ultralytics) also make: polygon parts with fewer than 3 points or no area are
dropped, parts that pass the border are clipped. What it returns is safe to rasterise at the
image's size: every coordinate lies in the image, every RLE covers exactly H x W pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sparseinst_cli.data.check_segm import OUT_TOLERANCE, clip_polygon, rle_runs

# Repairs, counted in the loader's one notice line (kind -> what was done).
DEGENERATE_PART = "polygon part(s) with fewer than 3 points or no area dropped"
CLIPPED = "polygon(s) clipped to the image"
EMPTY_MASK = "annotation(s) without a usable mask dropped"
MIN_PART_AREA = 1e-6  # square pixels: a polygon part below this is a line or a point


@dataclass
class SegmResult:
    """The cleaned segmentation (None: the annotation is dropped), the error that stops the
    load (None: none), the repairs made (kinds above) and the mask's area in pixels when it
    was computed without rasterising (RLE), else None."""

    segmentation: list | dict | None = None
    error: str | None = None
    repairs: list[str] = field(default_factory=list)
    rle_area: int | None = None


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def polygon_area(xy: np.ndarray) -> float:
    """Shoelace area of a polygon [K, 2]."""
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _part(part: object, width: int, height: int, margin: float) -> tuple[str, object]:
    """One polygon part -> ("ok" | "clipped", flat list), ("degenerate", None) or
    ("error", message)."""
    if not isinstance(part, list) or not all(_is_number(v) for v in part):
        return "error", "a polygon part is not a list of numbers"
    if len(part) < 6:
        return "degenerate", None
    if len(part) % 2:
        return "error", f"a polygon has an odd number of coordinates ({len(part)})"
    xy = np.asarray(part, np.float64).reshape(-1, 2)
    if not np.isfinite(xy).all():
        bad = next(v for v in part if not math.isfinite(v))
        return "error", f"a polygon has a non-finite coordinate ({bad})"
    lo, hi = xy.min(0), xy.max(0)
    if (lo < -margin).any() or hi[0] > width + margin or hi[1] > height + margin:
        far = xy[(xy[:, 0] < -margin) | (xy[:, 0] > width + margin)
                 | (xy[:, 1] < -margin) | (xy[:, 1] > height + margin)][0]
        return "error", (f"polygon point ({far[0]:g}, {far[1]:g}) lies far outside the "
                         f"{width}x{height} image")
    tol = OUT_TOLERANCE
    if (lo < -tol).any() or hi[0] > width + tol or hi[1] > height + tol:
        xy = clip_polygon(xy, width, height)
        if len(xy) < 3 or polygon_area(xy) < MIN_PART_AREA:
            return "degenerate", None
        return "clipped", [round(float(v), 2) for v in xy.ravel()]
    if polygon_area(xy) < MIN_PART_AREA:
        return "degenerate", None
    return "ok", part


def clean_polygons(parts: list, width: int, height: int) -> SegmResult:
    """Polygon parts: errors stop, degenerate parts go, parts over the border are clipped."""
    if parts and all(_is_number(v) for v in parts):
        return SegmResult(error="the segmentation is a flat list of numbers; write each "
                                "polygon as a list: [[x0, y0, x1, y1, ...]]")
    margin = float(max(width, height))  # farther than one image size away is corruption
    result = SegmResult()
    kept: list = []
    for part in parts:
        verdict, value = _part(part, width, height, margin)
        if verdict == "error":
            result.error = str(value)
            return result
        if verdict == "degenerate":
            result.repairs.append(DEGENERATE_PART)
            continue
        if verdict == "clipped":
            result.repairs.append(CLIPPED)
        kept.append(value)
    if kept:
        result.segmentation = kept
    else:
        result.repairs.append(EMPTY_MASK)
    return result


def clean_segmentation(segm: object, width: int, height: int) -> SegmResult:
    """Validate (and repair) one annotation's segmentation on a W x H image."""
    if isinstance(segm, list):
        return clean_polygons(segm, width, height)
    if isinstance(segm, dict):
        runs, error = rle_runs(segm, width, height)
        if error is not None:
            return SegmResult(error=error)
        area = sum(runs[1::2])
        if area == 0:
            return SegmResult(repairs=[EMPTY_MASK], rle_area=0)
        return SegmResult(segmentation=segm, rle_area=area)
    return SegmResult(error=f"segmentation {segm!r:.30} is neither polygons nor an RLE")
