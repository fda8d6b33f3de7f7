"""A small synthetic instance-segmentation dataset (coloured shapes), generated in seconds.

Shapes of three classes (circle, rectangle, triangle) with category ids 1, 3 and 7 (not
contiguous, to exercise the id mapping) touch and overlap on noisy backgrounds. Later shapes
cover earlier ones and every mask is the visible part: an unoccluded shape is annotated with
its polygon, an occluded one with compressed RLE. Output is a folder with JPEG images, COCO
JSON files and a DATA.yaml; the same parameters always give the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sparseinst_cli.data.transforms import polygons_to_mask

from .writer import Renderer, write_dataset

DEMO_VERSION = 1
# (category id, name, base RGB colour)
DEMO_CLASSES: tuple[tuple[int, str, tuple[int, int, int]], ...] = (
    (1, "circle", (215, 60, 50)),
    (3, "rectangle", (50, 175, 70)),
    (7, "triangle", (55, 90, 220)),
)
MIN_VISIBLE_FRACTION = 0.5
MIN_VISIBLE_PIXELS = 300


@dataclass(frozen=True)
class DemoParams:
    num_train: int
    num_val: int
    image_size: tuple[int, int]
    seed: int
    version: int = DEMO_VERSION


def make_demo_dataset(
    root: str | Path, *, num_train: int = 200, num_val: int = 50,
    image_size: tuple[int, int] = (256, 320), seed: int = 0,
) -> Path:
    """Generate (or reuse) the demo dataset under `root`; returns the path of its data.yaml.

    image_size is (height, width). An existing dataset is reused when its parameters match.
    """
    params = DemoParams(num_train, num_val, (int(image_size[0]), int(image_size[1])), seed)
    h, w = params.image_size

    def renderer(tag: int) -> Renderer:
        return lambda i: render_image(np.random.default_rng([seed, tag, i]), h, w)

    categories = [{"id": c, "name": n, "supercategory": "shape"} for c, n, _ in DEMO_CLASSES]
    return write_dataset(
        root, marker="demo.json", params=_params_dict(params), categories=categories,
        splits={"train": (num_train, renderer(0)), "val": (num_val, renderer(1))},
    )


def _params_dict(params: DemoParams) -> dict:
    d = asdict(params)
    d["image_size"] = list(params.image_size)
    return d


def render_image(
    rng: np.random.Generator, h: int, w: int
) -> tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray | None]]]:
    """One image uint8 [h, w, 3] and its objects (category id, visible mask [h, w], polygon).

    The polygon [K, 2] is given only when the shape is fully visible, else None.
    """
    image = _background(rng, h, w)
    shapes: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []  # cls, poly, full, visible
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(30):
            cls = int(rng.integers(len(DEMO_CLASSES)))
            anchor = shapes[int(rng.integers(len(shapes)))][1] if shapes and rng.random() < 0.5 \
                else None
            poly = _shape_polygon(cls, rng, h, w, anchor)
            full = polygons_to_mask([poly], h, w)
            if _placement_ok(full, shapes):
                for s in shapes:
                    s[3][full] = False
                shapes.append((cls, poly, full, full.copy()))
                _paint(image, full, DEMO_CLASSES[cls][2], rng)
                break
    return image, [
        (DEMO_CLASSES[cls][0], vis, poly if np.array_equal(vis, full) else None)
        for cls, poly, full, vis in shapes
    ]


def _placement_ok(full: np.ndarray, shapes: list) -> bool:
    """A new shape must be big enough and leave every earlier one mostly visible."""
    if full.sum() < MIN_VISIBLE_PIXELS:
        return False
    for _, _, prev_full, prev_vis in shapes:
        left = int((prev_vis & ~full).sum())
        if left < MIN_VISIBLE_PIXELS or left < MIN_VISIBLE_FRACTION * prev_full.sum():
            return False
    return True


def _shape_polygon(
    cls: int, rng: np.random.Generator, h: int, w: int, anchor: np.ndarray | None
) -> np.ndarray:
    """Vertices [K, 2] (x, y) of a random shape; near `anchor` (a polygon) when given."""
    s = min(h, w)
    name = DEMO_CLASSES[cls][1]
    if name == "circle":
        r = rng.uniform(0.11, 0.2) * s
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        local, extent = np.stack([r * np.cos(t), r * np.sin(t)], 1), r
    elif name == "rectangle":
        a, b = rng.uniform(0.09, 0.2, size=2) * s
        local = np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
        local, extent = _rotate(local, rng.uniform(-math.pi / 6, math.pi / 6)), math.hypot(a, b)
    else:
        r = rng.uniform(0.13, 0.24) * s
        t = rng.uniform(0, 2 * math.pi / 3) + np.arange(3) * 2 * math.pi / 3
        local, extent = np.stack([r * np.cos(t), r * np.sin(t)], 1), r
    if anchor is not None:  # touch or overlap an earlier shape
        centre = anchor.mean(0)
        reach = np.abs(anchor - centre).max() + extent * rng.uniform(0.6, 1.0)
        angle = rng.uniform(0, 2 * math.pi)
        cx, cy = centre + reach * np.array([math.cos(angle), math.sin(angle)])
    else:
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    cx = float(np.clip(cx, extent, max(extent, w - extent)))
    cy = float(np.clip(cy, extent, max(extent, h - extent)))
    return np.round(local + np.array([cx, cy]), 2)


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth grey-ish colour field plus pixel noise, uint8 [h, w, 3]."""
    grid = rng.uniform(70, 175, size=(3, 4, 3))
    grid = 0.6 * grid.mean(axis=2, keepdims=True) + 0.4 * grid  # desaturate
    smooth = np.asarray(Image.fromarray(grid.astype(np.uint8)).resize((w, h), Image.BILINEAR))
    noisy = smooth.astype(np.float32) + rng.normal(0, 10, size=(h, w, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _paint(image: np.ndarray, mask: np.ndarray, base: tuple[int, int, int],
           rng: np.random.Generator) -> None:
    """Fill `mask` with the class colour, jittered per shape, with shading and noise."""
    h, w = mask.shape
    colour = np.asarray(base, np.float32) + rng.uniform(-25, 25, size=3)
    ys, xs = np.nonzero(mask)
    gx, gy = rng.uniform(-0.15, 0.15, size=2)
    shade = 1.0 + gx * (xs / w - 0.5) + gy * (ys / h - 0.5)
    pixels = colour[None, :] * shade[:, None] + rng.normal(0, 6, size=(len(xs), 3))
    image[ys, xs] = np.clip(pixels, 0, 255).astype(np.uint8)
