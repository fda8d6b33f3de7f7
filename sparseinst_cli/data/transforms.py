"""Training augmentation with detectron2 semantics: flip, shortest-edge resize, the "aug" crop,
and optionally a random window of the resized image (mmdetection's RandomCrop after Resize).

Geometry follows the official SparseInst mapper: polygons are moved as coordinates and
rasterised once at the final size (pycocotools); bitmasks (from RLE) are flipped, cropped and
resized with nearest-neighbour. Images are resized with PIL bilinear on uint8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

DEFAULT_MIN_SIZES = (416, 448, 480, 512, 544, 576, 608, 640)
PAD_MULTIPLE = 32  # batches are padded up to a multiple of this (preprocess.pad_batch)


@dataclass(frozen=True)
class TransformConfig:
    """Training augmentation settings (defaults: the official COCO recipe).

    `crop_resize_max_size` None means unbounded, as detectron2's ResizeShortestEdge default.
    """

    min_sizes: tuple[int, ...] = DEFAULT_MIN_SIZES
    max_size: int = 853
    flip_prob: float = 0.5
    crop_enabled: bool = False
    crop_size: tuple[int, int] = (384, 600)
    crop_prob: float = 0.5
    crop_resize_sizes: tuple[int, ...] = (400, 500, 600)
    crop_resize_max_size: int | None = None
    window: int = 0  # > 0: a random window of at most window x window after the resize


@dataclass
class Instance:
    """One ground-truth object before rasterisation.

    Exactly one of `polygons` (each float64 [K, 2] as (x, y) in pixel-corner coordinates)
    and `mask` (bool [H, W] at the current image size) is set.
    """

    label: int
    polygons: list[np.ndarray] | None = None
    mask: np.ndarray | None = field(default=None, repr=False)


def shortest_edge_size(h: int, w: int, short: int, max_size: int | None) -> tuple[int, int]:
    """Output (new_h, new_w) of detectron2's ResizeShortestEdge for an (h, w) image."""
    scale = short * 1.0 / min(h, w)
    if h < w:
        new_h, new_w = float(short), scale * w
    else:
        new_h, new_w = scale * h, float(short)
    if max_size is not None and max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_image(image_uint8_hwc: np.ndarray, new_hw: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 [H, W, C] (or [H, W]) image with PIL bilinear (antialiased when shrinking)."""
    new_h, new_w = new_hw
    if image_uint8_hwc.shape[:2] == (new_h, new_w):
        return image_uint8_hwc
    if image_uint8_hwc.dtype != np.uint8:
        raise ValueError(f"resize_image expects uint8, got {image_uint8_hwc.dtype}")
    pil = Image.fromarray(np.ascontiguousarray(image_uint8_hwc))
    return np.asarray(pil.resize((new_w, new_h), Image.BILINEAR))


def resize_mask(mask: np.ndarray, new_hw: tuple[int, int]) -> np.ndarray:
    """Resize a bool [H, W] mask with nearest-neighbour (PIL NEAREST, as detectron2)."""
    new_h, new_w = new_hw
    if mask.shape == (new_h, new_w):
        return mask
    pil = Image.fromarray(mask.astype(np.uint8))
    return np.asarray(pil.resize((new_w, new_h), Image.NEAREST)).astype(bool)


def hflip(image: np.ndarray, instances: list[Instance]) -> tuple[np.ndarray, list[Instance]]:
    """Mirror an [H, W, C] image and its instances left-right (x -> W - x for polygons)."""
    width = image.shape[1]
    out = []
    for inst in instances:
        if inst.polygons is not None:
            polys = [np.stack([width - p[:, 0], p[:, 1]], axis=1) for p in inst.polygons]
            out.append(Instance(inst.label, polygons=polys))
        else:
            out.append(Instance(inst.label, mask=inst.mask[:, ::-1]))
    return image[:, ::-1], out


def resize(
    image: np.ndarray, instances: list[Instance], new_hw: tuple[int, int]
) -> tuple[np.ndarray, list[Instance]]:
    """Resize an image to `new_hw`; polygons are scaled, bitmasks resized nearest."""
    h, w = image.shape[:2]
    sx, sy = new_hw[1] / w, new_hw[0] / h
    out = []
    for inst in instances:
        if inst.polygons is not None:
            polys = [p * np.array([sx, sy]) for p in inst.polygons]
            out.append(Instance(inst.label, polygons=polys))
        else:
            out.append(Instance(inst.label, mask=resize_mask(inst.mask, new_hw)))
    return resize_image(image, new_hw), out


def clip_polygon(poly: np.ndarray, width: float, height: float) -> np.ndarray:
    """Clip a polygon [K, 2] to the box [0, width] x [0, height] (Sutherland-Hodgman)."""
    for axis, bound, sign in ((0, 0.0, 1.0), (0, width, -1.0), (1, 0.0, 1.0), (1, height, -1.0)):
        if len(poly) == 0:
            break
        dist = sign * (poly[:, axis] - bound)  # >= 0 inside this edge
        inside = dist >= 0
        nxt_poly, nxt_dist = np.roll(poly, -1, axis=0), np.roll(dist, -1)
        cross = inside != np.roll(inside, -1)
        denom = np.where(cross, dist - nxt_dist, 1.0)
        t = np.where(cross, dist / denom, 0.0)[:, None]
        inter = poly + t * (nxt_poly - poly)
        # vertex i (if inside) then the crossing of edge i -> i+1 (if any), in order
        pts = np.stack([poly, inter], axis=1).reshape(-1, 2)
        poly = pts[np.stack([inside, cross], axis=1).reshape(-1)]
    return poly


def crop(
    image: np.ndarray, instances: list[Instance], y0: int, x0: int, h: int, w: int
) -> tuple[np.ndarray, list[Instance]]:
    """Crop the window [y0:y0+h, x0:x0+w]; polygons are shifted and clipped to it."""
    out = []
    for inst in instances:
        if inst.polygons is not None:
            polys = [clip_polygon(p - np.array([x0, y0]), w, h) for p in inst.polygons]
            polys = [p for p in polys if len(p) >= 3]
            if polys:
                out.append(Instance(inst.label, polygons=polys))
        else:
            out.append(Instance(inst.label, mask=inst.mask[y0:y0 + h, x0:x0 + w]))
    return image[y0:y0 + h, x0:x0 + w], out


def polygons_to_mask(polygons: Sequence[np.ndarray], h: int, w: int) -> np.ndarray:
    """Rasterise polygons (each [K, 2], K >= 3) to one bool [h, w] mask with pycocotools."""
    flat = [np.ascontiguousarray(p, dtype=np.float64).reshape(-1) for p in polygons]
    rles = mask_util.frPyObjects(flat, h, w)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def rasterize(instances: list[Instance], h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Instances -> (labels int64 [M], masks bool [M, h, w]); empty masks are dropped."""
    labels, masks = [], []
    for inst in instances:
        if inst.polygons is not None:
            m = polygons_to_mask(inst.polygons, h, w)
        else:
            m = np.ascontiguousarray(inst.mask, dtype=bool)
        if m.any():
            labels.append(inst.label)
            masks.append(m)
    if not masks:
        return np.zeros((0,), np.int64), np.zeros((0, h, w), bool)
    return np.asarray(labels, np.int64), np.stack(masks)


def random_crop_window(
    h: int, w: int, crop_size: tuple[int, int], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """detectron2 RandomCrop("absolute_range"): (y0, x0, crop_h, crop_w) inside an (h, w) image."""
    lo, hi = crop_size
    ch = int(rng.integers(min(h, lo), min(h, hi) + 1))
    cw = int(rng.integers(min(w, lo), min(w, hi) + 1))
    y0 = int(rng.integers(h - ch + 1))
    x0 = int(rng.integers(w - cw + 1))
    return y0, x0, ch, cw


def _resize_shortest(
    image: np.ndarray, instances: list[Instance], sizes: Sequence[int], max_size: int | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[Instance]]:
    short = int(sizes[int(rng.integers(len(sizes)))])
    h, w = image.shape[:2]
    return resize(image, instances, shortest_edge_size(h, w, short, max_size))


def apply_train_transforms(
    image: np.ndarray, instances: list[Instance], cfg: TransformConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augment one image: uint8 [H, W, 3] -> (uint8 [H', W', 3], labels [M], masks [M, H', W']).

    Order (official mapper): flip; with `crop_prob` (if enabled) resize the short side to one of
    `crop_resize_sizes` and take a random absolute-range crop; then the multi-scale resize; then,
    if `window` is set, a random window of at most `window` pixels a side. Instances whose mask
    ends up empty are dropped; those the window cuts keep their visible part.
    """
    use_crop = cfg.crop_enabled and rng.random() < cfg.crop_prob
    if rng.random() < cfg.flip_prob:
        image, instances = hflip(image, instances)
    if use_crop:
        image, instances = _resize_shortest(
            image, instances, cfg.crop_resize_sizes, cfg.crop_resize_max_size, rng
        )
        y0, x0, ch, cw = random_crop_window(*image.shape[:2], cfg.crop_size, rng)
        image, instances = crop(image, instances, y0, x0, ch, cw)
    image, instances = _resize_shortest(image, instances, cfg.min_sizes, cfg.max_size, rng)
    if cfg.window:
        # Each side up to 31 px short of its padded size, so that batches carry the padding
        # inference adds up to a multiple of 32: a model trained on full windows never saw it,
        # and its centre heatmap fired along the padding's edge, where peaks took queries from
        # objects (rods stand-in: 2 AP lost). Every window pads to the same size, so a batch
        # split over processes is padded as the whole batch is.
        below = (cfg.window - 1) // PAD_MULTIPLE * PAD_MULTIPLE
        smallest = below + 1 if below else cfg.window
        window = random_crop_window(*image.shape[:2], (smallest, cfg.window), rng)
        image, instances = crop(image, instances, *window)
    image = np.ascontiguousarray(image)
    labels, masks = rasterize(instances, *image.shape[:2])
    return image, labels, masks
