"""Writing a generated dataset to disk, shared by the synthetic datasets (demo, crowded).

Layout: `images/{split}/000001.jpg ...`, `annotations/{split}.json` (COCO instances), a
`data.yaml` naming them, and a marker JSON holding the generator's parameters. A dataset whose
marker matches the parameters (and whose files are all there) is reused, not regenerated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from pycocotools import mask as mask_util

# One object of a rendered image: (category id, visible mask bool [H, W], polygon [K, 2] or None).
# A polygon, when given, is written as the segmentation; otherwise the mask's compressed RLE.
RenderedObject = tuple[int, np.ndarray, "np.ndarray | None"]
# Renders image number i of a split: (uint8 [H, W, 3] or grey [H, W], its objects).
Renderer = Callable[[int], tuple[np.ndarray, list[RenderedObject]]]


def write_dataset(
    root: str | Path, *, marker: str, params: dict, splits: dict[str, tuple[int, Renderer]],
    categories: list[dict],
) -> Path:
    """Render every split under `root` unless an identical dataset is there; returns data.yaml.

    `params` (JSON-serialisable) identifies the dataset and is stored in `root/marker`;
    `splits` maps a split name to (image count, renderer).
    """
    root = Path(root)
    data_yaml = root / "data.yaml"
    if is_complete(root, marker, params, {s: n for s, (n, _) in splits.items()}):
        return data_yaml
    for split, (count, render) in splits.items():
        coco = write_split(root / "images" / split, count, render, categories)
        write_text(root / "annotations" / f"{split}.json", json.dumps(coco))
    data: dict = {s: {"images": f"images/{s}", "annotations": f"annotations/{s}.json"}
                  for s in splits}
    data["names"] = [c["name"] for c in categories]
    write_text(data_yaml, yaml.safe_dump(data, sort_keys=False))
    write_text(root / marker, json.dumps(params, sort_keys=True))
    return data_yaml


def is_complete(root: Path, marker: str, params: dict, counts: dict[str, int]) -> bool:
    """Whether `root` holds the dataset of `params` with `counts[split]` images per split."""
    try:
        found = json.loads((root / marker).read_text())
    except (OSError, ValueError):
        return False
    if found != params or not (root / "data.yaml").is_file():
        return False
    for split, count in counts.items():
        if not (root / "annotations" / f"{split}.json").is_file():
            return False
        if len(list((root / "images" / split).glob("*.jpg"))) != count:
            return False
    return True


def write_text(path: Path, text: str) -> None:
    """Write atomically, so concurrent generators never leave a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_split(image_dir: Path, count: int, render: Renderer, categories: list[dict]) -> dict:
    """Render `count` images into image_dir (JPEG, quality 92); returns the split's COCO dict."""
    image_dir.mkdir(parents=True, exist_ok=True)
    for stale in image_dir.glob("*.jpg"):
        if not stale.stem.isdigit() or not 1 <= int(stale.stem) <= count:
            stale.unlink()
    images, annotations = [], []
    for i in range(count):
        image, objects = render(i)
        h, w = image.shape[:2]
        file_name = f"{i + 1:06d}.jpg"
        Image.fromarray(image).save(image_dir / file_name, quality=92)
        images.append({"id": i + 1, "file_name": file_name, "height": h, "width": w})
        for cat_id, visible, polygon in objects:
            annotations.append(annotation(len(annotations) + 1, i + 1, cat_id, visible, polygon))
    return {"images": images, "annotations": annotations, "categories": categories}


def annotation(
    ann_id: int, image_id: int, cat_id: int, visible: np.ndarray, polygon: np.ndarray | None
) -> dict:
    """COCO annotation of one object; `visible` is its bool mask [H, W]."""
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
