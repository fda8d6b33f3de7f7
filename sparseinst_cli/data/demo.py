"""A small synthetic instance-segmentation dataset (coloured shapes), generated in seconds.

Shapes of three classes (circle, rectangle, triangle) with category ids 1, 3 and 7 (not
contiguous, to exercise the id mapping) touch and overlap on noisy backgrounds. Later shapes
cover earlier ones and every mask is the visible part: an unoccluded shape is annotated with
its polygon, an occluded one with compressed RLE. Output is a folder with JPEG images, COCO
JSON files and a DATA.yaml; the same parameters always give the same bytes.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from pycocotools import mask as mask_util

from sparseinst_cli.data.transforms import polygons_to_mask

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
    root = Path(root)
    params = DemoParams(num_train, num_val, (int(image_size[0]), int(image_size[1])), seed)
    marker, data_yaml = root / "demo.json", root / "data.yaml"
    if _is_complete(root, params):
        return data_yaml
    for split, count, tag in (("train", num_train, 0), ("val", num_val, 1)):
        coco = _make_split(root / "images" / split, count, params, tag)
        _write_text(root / "annotations" / f"{split}.json", json.dumps(coco))
    data = {
        "train": {"images": "images/train", "annotations": "annotations/train.json"},
        "val": {"images": "images/val", "annotations": "annotations/val.json"},
        "names": [name for _, name, _ in DEMO_CLASSES],
    }
    _write_text(data_yaml, yaml.safe_dump(data, sort_keys=False))
    _write_text(marker, json.dumps(_params_dict(params), sort_keys=True))
    return data_yaml


def _params_dict(params: DemoParams) -> dict:
    d = asdict(params)
    d["image_size"] = list(params.image_size)
    return d


def _is_complete(root: Path, params: DemoParams) -> bool:
    try:
        found = json.loads((root / "demo.json").read_text())
    except (OSError, ValueError):
        return False
    if found != _params_dict(params) or not (root / "data.yaml").is_file():
        return False
    for split, count in (("train", params.num_train), ("val", params.num_val)):
        if not (root / "annotations" / f"{split}.json").is_file():
            return False
        if len(list((root / "images" / split).glob("*.jpg"))) != count:
            return False
    return True


def _write_text(path: Path, text: str) -> None:
    """Write atomically, so concurrent generators never leave a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _make_split(image_dir: Path, count: int, params: DemoParams, tag: int) -> dict:
    """Render `count` images into image_dir and return the split's COCO dict."""
    image_dir.mkdir(parents=True, exist_ok=True)
    for stale in image_dir.glob("*.jpg"):
        if not stale.stem.isdigit() or not 1 <= int(stale.stem) <= count:
            stale.unlink()
    h, w = params.image_size
    images, annotations = [], []
    for i in range(count):
        rng = np.random.default_rng([params.seed, tag, i])
        image, objects = render_image(rng, h, w)
        file_name = f"{i + 1:06d}.jpg"
        Image.fromarray(image).save(image_dir / file_name, quality=92)
        images.append({"id": i + 1, "file_name": file_name, "height": h, "width": w})
        for cat_id, visible, polygon in objects:
            annotations.append(_annotation(len(annotations) + 1, i + 1, cat_id, visible, polygon))
    categories = [{"id": c, "name": n, "supercategory": "shape"} for c, n, _ in DEMO_CLASSES]
    return {"images": images, "annotations": annotations, "categories": categories}


def _annotation(
    ann_id: int, image_id: int, cat_id: int, visible: np.ndarray, polygon: np.ndarray | None
) -> dict:
    rle = mask_util.encode(np.asfortranarray(visible.astype(np.uint8)))
    if polygon is not None:
        segm: list | dict = [polygon.reshape(-1).tolist()]
    else:
        segm = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    return {
        "id": ann_id, "image_id": image_id, "category_id": cat_id, "segmentation": segm,
        "area": float(visible.sum()), "bbox": [float(x) for x in mask_util.toBbox(rle)],
        "iscrowd": 0,
    }


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
