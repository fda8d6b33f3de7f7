"""Validation of a COCO instances dict: the one gate between a file and the loaders.

Every field a loader reads is checked before anything is built from it: ids unique and of the
right type, references resolved, sizes positive and below what an image can be, numbers finite,
segmentations safe to rasterise (`validate_segm.py`). Broken data stops with one line naming
the file, the ids and what to do; harmless flaws are repaired and counted in one notice line.
Training (preflight and workers), `eval --data` and `export --int8 --data` all load through it.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from pycocotools import mask as mask_util

from sparseinst_cli.data.validate_segm import (
    CLIPPED,
    DEGENERATE_PART,
    EMPTY_MASK,
    clean_segmentation,
)
from sparseinst_cli.errors import UserError

# PIL refuses to decode an image above twice its bomb limit, so no real image is larger.
MAX_IMAGE_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)
MAX_SIDE = 65_535  # JPEG's and WebP's limit, far above any camera
REQUIRED_KEYS = ("images", "annotations", "categories")
SHOWN = 3  # errors quoted in the one line
AREA_COMPUTED = "area(s) computed"
REPAIR_ORDER = (DEGENERATE_PART, EMPTY_MASK, CLIPPED, AREA_COMPUTED)
FIX_HINT = "fix the file, or write a cleaned copy with `sparseinst data check --fix`"


@dataclass(frozen=True)
class Problem:
    """One error: its kind, where it is (`annotation 7 (image 3)`) and what is wrong."""

    kind: str
    where: str
    detail: str


def load_raw_coco(path: Path) -> dict:
    """The JSON as a dict with list-valued images/annotations/categories; nothing validated."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}); check the data YAML") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); give a COCO instances file") from e
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a COCO instances file: the top level is not an object")
    bad = [k for k in REQUIRED_KEYS if not isinstance(data.get(k), list)]
    if bad:
        raise UserError(f"{path} is not a COCO instances file: no list under {', '.join(bad)}")
    return data


def is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def image_side(v: object) -> int | None:
    """An image side as an int (integral floats such as 480.0 accepted), else None."""
    if is_int(v):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def _image_problem(img: object) -> str | None:
    if not isinstance(img, dict):
        return "is not an object"
    missing = [k for k in ("id", "file_name", "height", "width") if k not in img]
    if missing:
        return f"lacks {', '.join(missing)}"
    if not is_int(img["id"]):
        return f"has id {img['id']!r:.30}, not an integer"
    if not isinstance(img["file_name"], str) or not img["file_name"]:
        return "has no file_name string"
    w, h = image_side(img["width"]), image_side(img["height"])
    if w is None or h is None or w <= 0 or h <= 0:
        return f"has width/height {img['width']!r:.20}/{img['height']!r:.20}, not positive integers"
    if max(w, h) > MAX_SIDE or w * h > MAX_IMAGE_PIXELS:
        return (f"declares {w}x{h} pixels, more than an image can have "
                f"({MAX_SIDE} per side, {MAX_IMAGE_PIXELS} in all)")
    return None


def _images(images: list, problems: list[Problem]) -> tuple[list[dict], dict[int, tuple]]:
    """Checked image entries (sizes as ints) and {id: (width, height)}."""
    out: list[dict] = []
    sizes: dict[int, tuple[int, int]] = {}
    first: dict[int, str] = {}
    for i, img in enumerate(images):
        problem = _image_problem(img)
        if problem is not None:
            problems.append(Problem("bad image entry", f"images[{i}]", problem))
            continue
        if img["id"] in sizes:
            problems.append(Problem("duplicate image id", f"images[{i}] ({img['file_name']})",
                                    f"id {img['id']} is also the id of {first[img['id']]}; "
                                    "give every image its own id"))
            continue
        first[img["id"]] = img["file_name"]
        w, h = image_side(img["width"]), image_side(img["height"])
        sizes[img["id"]] = (w, h)
        out.append({**img, "width": w, "height": h})
    return out, sizes


def _categories(categories: list, problems: list[Problem]) -> set[int]:
    ids: set[int] = set()
    for i, cat in enumerate(categories):
        where = f"categories[{i}]"
        if not isinstance(cat, dict) or not is_int(cat.get("id")):
            problems.append(Problem("bad category", where, "is not an object with an integer id"))
        elif "name" in cat and (not isinstance(cat["name"], str) or not cat["name"]):
            problems.append(Problem("bad category", f"category {cat['id']}",
                                    f"has name {cat['name']!r:.30}, not a string"))
        elif cat["id"] in ids:
            problems.append(Problem("duplicate category id", f"category {cat['id']}",
                                    "its id is used by an earlier category"))
        else:
            ids.add(cat["id"])
    return ids


def _ann_problem(ann: dict, sizes: dict, cat_ids: set) -> tuple[str, str] | None:
    """(kind, detail) of a reference or scalar-field problem of an annotation, or None."""
    if not is_int(ann.get("image_id")) or ann["image_id"] not in sizes:
        return "unknown image", f"image_id {ann.get('image_id')!r:.30} is not in 'images'"
    if not is_int(ann.get("category_id")) or ann["category_id"] not in cat_ids:
        return ("unknown category",
                f"category_id {ann.get('category_id')!r:.30} is not in 'categories'")
    if ann.get("iscrowd", 0) not in (0, 1) or isinstance(ann.get("iscrowd"), float):
        return "bad iscrowd", f"iscrowd {ann.get('iscrowd')!r:.30} is not 0 or 1"
    area = ann.get("area", 0)
    if not _is_number(area) or not math.isfinite(area) or area < 0:
        return "bad area", f"area {area!r:.30} is not a finite number >= 0"
    bbox = ann.get("bbox", [])
    if not isinstance(bbox, list) or bbox and (
        len(bbox) != 4 or not all(_is_number(v) and math.isfinite(v) for v in bbox)
    ):
        return "bad bbox", f"bbox {bbox!r:.40} is not 4 finite numbers"
    if "segmentation" not in ann:
        return ("no segmentation",
                "has no 'segmentation'; SparseInst needs instance masks (polygons or RLE)")
    return None


def _annotation(ann: object, i: int, seen: set, sizes: dict, cat_ids: set,
                problems: list[Problem], repairs: Counter) -> dict | None:
    """The checked (and repaired) annotation, or None when it is dropped or broken."""
    if not isinstance(ann, dict) or not is_int(ann.get("id")):
        problems.append(Problem("bad annotation entry", f"annotations[{i}]",
                                "is not an object with an integer id"))
        return None
    where = f"annotation {ann['id']}"
    if is_int(ann.get("image_id")) and ann["image_id"] in sizes:
        where += f" (image {ann['image_id']})"
    if ann["id"] in seen:
        problems.append(Problem("duplicate annotation id", where,
                                "its id is used by an earlier annotation"))
        return None
    seen.add(ann["id"])
    problem = _ann_problem(ann, sizes, cat_ids)
    if problem is not None:
        problems.append(Problem(problem[0], where, problem[1]))
        return None
    width, height = sizes[ann["image_id"]]
    result = clean_segmentation(ann["segmentation"], width, height)
    if result.error is not None:
        problems.append(Problem("bad segmentation", where, result.error))
        return None
    repairs.update(result.repairs)
    if result.segmentation is None:
        return None
    out = {**ann, "segmentation": result.segmentation, "iscrowd": int(ann.get("iscrowd", 0))}
    if "area" not in out or result.repairs:
        repairs.update([AREA_COMPUTED] if "area" not in out else [])
        out["area"] = float(result.rle_area if result.rle_area is not None
                            else _polygon_mask_area(result.segmentation, height, width))
    return out


def _polygon_mask_area(parts: list, height: int, width: int) -> int:
    """Pixels of valid polygon parts (inside the image) rasterised as COCO does, as RLE."""
    return int(mask_util.area(mask_util.merge(mask_util.frPyObjects(parts, height, width))))


def error_line(path: Path, problems: list[Problem]) -> str:
    """One line: the file, the count per kind when there are many, the first examples."""
    quoted = "; ".join(f"{p.where}: {p.detail}" for p in problems[:SHOWN])
    if len(problems) == 1:
        return f"{path}: {quoted}; {FIX_HINT}"
    kinds = ", ".join(f"{k}: {n}" for k, n in Counter(p.kind for p in problems).items())
    more = f"; first {SHOWN}" if len(problems) > SHOWN else ""
    return f"{path}: {len(problems)} problems ({kinds}){more}: {quoted}; {FIX_HINT}"


def repair_line(path: Path, repairs: Counter) -> str | None:
    """The one notice line of what was repaired or dropped, or None when nothing was."""
    if not repairs:
        return None
    done = ", ".join(f"{repairs[kind]} {kind}" for kind in REPAIR_ORDER if repairs[kind])
    return f"{path.name}: {done} (as detectron2 does; `sparseinst data check` lists them)"


def validate_coco(data: dict, path: Path) -> tuple[dict, str | None]:
    """(the checked, repaired copy of a COCO dict whose top-level lists exist, the repair
    notice or None); raises UserError naming every problem kind when the data is broken."""
    problems: list[Problem] = []
    repairs: Counter = Counter()
    images, sizes = _images(data["images"], problems)
    cat_ids = _categories(data["categories"], problems)
    seen: set = set()
    anns = [_annotation(a, i, seen, sizes, cat_ids, problems, repairs)
            for i, a in enumerate(data["annotations"])]
    if problems:
        raise UserError(error_line(path, problems))
    out = {**data, "images": images, "annotations": [a for a in anns if a is not None]}
    return out, repair_line(path, repairs)
