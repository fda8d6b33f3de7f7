"""Geometry checks of one COCO annotation: polygon shape, image bounds, mask area.

Pure functions used by `check.py`: each returns what is wrong (kind, detail) and what
`--fix` would keep, so the report and the cleaned JSON never disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_util

BAD_POLYGON = "bad polygon"
BAD_SEGMENTATION = "bad segmentation"
ZERO_AREA = "zero area"
OUT_OF_IMAGE = "out of image"
OUT_TOLERANCE = 1.0  # pixels a coordinate may pass the border before it counts as outside


@dataclass
class SegmVerdict:
    """Problems of one annotation's geometry and the repair `--fix` applies.

    `problems` holds (kind, detail); `drop` removes the annotation; `segmentation` replaces
    it when not None; `recompute` refreshes `area` and `bbox` from the mask.
    """

    problems: list[tuple[str, str]] = field(default_factory=list)
    drop: bool = False
    segmentation: list | None = None
    recompute: bool = False


def polygon_problem(part: object) -> str | None:
    """Why one polygon part [x0, y0, x1, y1, ...] is unusable, or None when it is fine."""
    if not isinstance(part, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in part
    ):
        return "a polygon part is not a list of numbers"
    if not all(math.isfinite(v) for v in part):
        return "a polygon has non-finite coordinates"
    if len(part) % 2:
        return f"a polygon has an odd coordinate count ({len(part)})"
    if len(part) < 6:
        return f"a polygon has {len(part) // 2} point(s), fewer than 3"
    return None


def clip_polygon(xy: np.ndarray, width: float, height: float) -> np.ndarray:
    """Intersection of a polygon [K, 2] (x, y) with the box [0, W] x [0, H] -> [K', 2].

    Sutherland-Hodgman against the four borders; an empty [0, 2] array when nothing is inside.
    """
    pts = np.asarray(xy, np.float64).reshape(-1, 2)
    for axis, bound, below in ((0, 0.0, False), (0, width, True), (1, 0.0, False),
                               (1, height, True)):
        if len(pts) == 0:
            break
        pts = _clip_edge(pts, axis, bound, below)
    return pts


def _clip_edge(pts: np.ndarray, axis: int, bound: float, below: bool) -> np.ndarray:
    """Keep the side of the line `coord[axis] == bound` that is below (or above) it."""
    inside = pts[:, axis] <= bound if below else pts[:, axis] >= bound
    out: list[np.ndarray] = []
    for i in range(len(pts)):
        cur, prev = pts[i], pts[i - 1]
        if inside[i] != inside[i - 1]:
            t = (bound - prev[axis]) / (cur[axis] - prev[axis])
            crossing = prev + t * (cur - prev)
            crossing[axis] = bound
            out.append(crossing)
        if inside[i]:
            out.append(cur)
    return np.array(out, np.float64).reshape(-1, 2)


def _outside(xy: np.ndarray, width: int, height: int) -> bool:
    tol = OUT_TOLERANCE
    return bool((xy < -tol).any() or (xy[:, 0] > width + tol).any()
                or (xy[:, 1] > height + tol).any())


def _to_rle(segm: list | dict, height: int, width: int) -> dict:
    """One compressed RLE of a valid segmentation (polygons, uncompressed or compressed RLE)."""
    if isinstance(segm, list):
        return mask_util.merge(mask_util.frPyObjects(segm, height, width))
    if isinstance(segm["counts"], list):
        return mask_util.frPyObjects(segm, height, width)
    return segm


def mask_area(segm: list | dict, height: int, width: int) -> int:
    """Pixels of a valid segmentation rasterised at [H, W]."""
    return int(mask_util.area(_to_rle(segm, height, width)))


def check_polygons(segm: list, width: int, height: int) -> SegmVerdict:
    """Bad parts are dropped (the annotation too when none is left); parts passing the
    border by more than OUT_TOLERANCE are clipped to the image."""
    verdict = SegmVerdict()
    good: list[list[float]] = []
    for part in segm:
        problem = polygon_problem(part)
        if problem:
            verdict.problems.append((BAD_POLYGON, problem))
        else:
            good.append(part)
    if not good:
        verdict.drop = True
        return verdict
    kept = _clip_parts(good, width, height, verdict)
    if verdict.drop:
        return verdict
    if len(kept) != len(segm) or kept is not good:
        verdict.segmentation = kept
        verdict.recompute = True
    return verdict


def _clip_parts(parts: list[list[float]], width: int, height: int,
                verdict: SegmVerdict) -> list[list[float]]:
    """Clip parts that leave the image; records OUT_OF_IMAGE and may set `drop`."""
    xys = [np.asarray(p, np.float64).reshape(-1, 2) for p in parts]
    if not any(_outside(xy, width, height) for xy in xys):
        return parts
    clipped = [clip_polygon(xy, width, height) for xy in xys]
    kept = [[round(float(v), 2) for v in c.ravel()] for c in clipped if len(c) >= 3]
    if not kept:
        verdict.problems.append((OUT_OF_IMAGE, f"entirely outside the {width}x{height} image"))
        verdict.drop = True
        return parts
    verdict.problems.append((OUT_OF_IMAGE, f"partly outside the {width}x{height} image"))
    return kept


def rle_counts(counts: str | bytes) -> list[int]:
    """Run lengths of a compressed COCO RLE string (pycocotools' rleFrString, in Python)."""
    data = counts.encode("ascii") if isinstance(counts, str) else counts
    out: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("truncated RLE string")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        out.append(x + out[-2] if len(out) > 2 else x)
    return out


def rle_runs(segm: dict, width: int, height: int) -> tuple[list[int] | None, str | None]:
    """The run lengths of an RLE that covers exactly the [H, W] image, or (None, why not)."""
    size, counts = segm.get("size"), segm.get("counts")
    if not isinstance(size, list) or len(size) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in size
    ):
        return None, f"RLE size {size!r:.40} is not [height, width]"
    if size != [height, width]:
        return None, f"RLE size {size} differs from the image's [{height}, {width}]"
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            return None, "RLE counts are not a list of integers"
        runs = counts
    elif isinstance(counts, str):
        try:
            runs = rle_counts(counts)
        except (ValueError, UnicodeEncodeError):
            return None, "RLE counts are not a valid COCO RLE string"
    else:
        return None, "RLE counts are neither a list of integers nor a COCO RLE string"
    if any(v < 0 for v in runs):
        return None, "RLE counts have a negative run"
    if sum(runs) != height * width:
        return None, (f"RLE counts cover {sum(runs)} pixels, not the {height}x{width} = "
                      f"{height * width} of its image")
    return runs, None


def check_rle(segm: dict, width: int, height: int) -> SegmVerdict:
    """An RLE must carry the image's size [H, W] and run lengths that add up to H * W
    (pycocotools decodes past the mask's end otherwise)."""
    problem = rle_runs(segm, width, height)[1]
    if problem is None:
        return SegmVerdict()
    return SegmVerdict([(BAD_SEGMENTATION, problem)], drop=True)


def check_segmentation(segm: object, width: int, height: int) -> SegmVerdict:
    """All geometry checks of one annotation's segmentation on a W x H image."""
    if isinstance(segm, list) and segm:
        verdict = check_polygons(segm, width, height)
    elif isinstance(segm, dict):
        verdict = check_rle(segm, width, height)
    else:
        verdict = SegmVerdict([(BAD_SEGMENTATION, "no polygons or RLE")], drop=True)
    if verdict.drop:
        return verdict
    final = verdict.segmentation if verdict.segmentation is not None else segm
    try:
        area = mask_area(final, height, width)
    except (ValueError, TypeError, KeyError) as e:
        verdict.problems.append((BAD_SEGMENTATION, f"cannot be rasterised ({e})"))
        verdict.drop = True
        return verdict
    if area == 0:
        verdict.problems.append((ZERO_AREA, "the mask is empty"))
        verdict.drop = True
    return verdict


def check_bbox(bbox: object, width: int, height: int) -> str | None:
    """Why a COCO bbox [x, y, w, h] leaves the W x H image, or None (absent bboxes pass)."""
    if bbox is None or bbox == []:
        return None
    if not isinstance(bbox, list) or len(bbox) != 4:
        return "the bbox is not 4 numbers"
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return "the bbox is not 4 numbers"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return "the bbox is not 4 finite numbers"
    tol = OUT_TOLERANCE
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return f"bbox {bbox} passes the border of the {width}x{height} image"
    return None


def area_and_bbox(segm: list | dict, height: int, width: int) -> tuple[float, list[float]]:
    """`area` and `bbox` [x, y, w, h] of a valid segmentation, as COCO computes them."""
    rle = _to_rle(segm, height, width)
    return float(mask_util.area(rle)), [float(v) for v in mask_util.toBbox(rle)]
