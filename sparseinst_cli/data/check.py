"""Dataset check: the defects of a COCO instances JSON and its images, as a report and a plan.

The JSON is read raw (not through `load_coco_json`, which stops at the first defect), so
every problem is reported. `check_coco` is pure apart from reading the images; the plan it
returns is applied by `fix.py`, so the report and the cleaned JSON always agree.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from sparseinst_cli.data.check_segm import (
    BAD_POLYGON,
    BAD_SEGMENTATION,
    OUT_OF_IMAGE,
    ZERO_AREA,
    area_and_bbox,
    check_bbox,
    check_segmentation,
)
from sparseinst_cli.data.validate import image_side, is_int, load_raw_coco

BAD_IMAGE_ENTRY = "bad image entry"
DUPLICATE_IMAGE_ID = "duplicate image id"
MISSING_IMAGE = "missing image"
UNREADABLE_IMAGE = "unreadable image"
SIZE_MISMATCH = "size mismatch"
EXIF_ROTATED = "EXIF-rotated"
BAD_CATEGORY = "bad category"
DUPLICATE_CATEGORY_ID = "duplicate category id"
BAD_ANN_ENTRY = "bad annotation entry"
BAD_ISCROWD = "bad iscrowd"
BAD_AREA = "bad area"
DUPLICATE_ANN_ID = "duplicate annotation id"
UNKNOWN_IMAGE = "unknown image"
UNKNOWN_CATEGORY = "unknown category"
CROWD_ONLY = "crowd-only image"
OVER_QUERIES = "more instances than queries"

FIX_ACTIONS: dict[str, str] = {  # kind -> what --fix does; the report's row order
    BAD_IMAGE_ENTRY: "image and its annotations dropped",
    DUPLICATE_IMAGE_ID: "later image dropped",
    MISSING_IMAGE: "image and its annotations dropped",
    UNREADABLE_IMAGE: "image and its annotations dropped",
    SIZE_MISMATCH: "width/height set to the real size",
    EXIF_ROTATED: "width/height set to the rotated size",
    BAD_CATEGORY: "category dropped",
    DUPLICATE_CATEGORY_ID: "later category dropped",
    BAD_ANN_ENTRY: "annotation dropped",
    BAD_ISCROWD: "annotation dropped",
    DUPLICATE_ANN_ID: "later annotation dropped",
    UNKNOWN_IMAGE: "annotation dropped",
    UNKNOWN_CATEGORY: "annotation dropped",
    BAD_SEGMENTATION: "annotation dropped",
    BAD_POLYGON: "part dropped (annotation if none is left)",
    OUT_OF_IMAGE: "clipped to the image (dropped if entirely outside)",
    BAD_AREA: "area recomputed",
    ZERO_AREA: "annotation dropped (area recomputed if only the field is 0)",
    CROWD_ONLY: "kept: training skips it",
    OVER_QUERIES: "kept: not every instance can be predicted",
}
WARNINGS = frozenset({CROWD_ONLY, OVER_QUERIES})  # reported, but not defects
EXIF_SWAPS = frozenset({5, 6, 7, 8})  # orientations that transpose width and height
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Finding:
    """One problem: its kind (a FIX_ACTIONS key), where it is, and what exactly is wrong."""

    kind: str
    detail: str
    image_id: object = None
    ann_id: object = None
    file: str | None = None

    def where(self) -> str:
        """`ann 7 (image 3)`, `image 3 (a.jpg)` or "" (an entry without ids), for tables."""
        if self.ann_id is not None:
            image = f" (image {self.image_id})" if self.image_id is not None else ""
            return f"ann {self.ann_id}{image}"
        if self.image_id is None:
            return ""
        return f"image {self.image_id}" + (f" ({self.file})" if self.file else "")


@dataclass
class FixPlan:
    """The repair of a COCO dict, by list index: entries to drop and fields to replace."""

    drop_images: set[int] = field(default_factory=set)
    drop_categories: set[int] = field(default_factory=set)
    image_updates: dict[int, dict] = field(default_factory=dict)
    drop_annotations: set[int] = field(default_factory=set)
    ann_updates: dict[int, dict] = field(default_factory=dict)


@dataclass
class DatasetReport:
    """Findings of one split; `histogram` maps instances per image -> number of images,
    counting the non-crowd annotations that `--fix` keeps, over the images it keeps."""

    annotations: Path
    images: Path
    num_images: int
    num_annotations: int
    num_queries: int
    findings: list[Finding]
    histogram: dict[int, int]
    plan: FixPlan = field(repr=False)

    def counts(self) -> dict[str, int]:
        """Findings per kind, in FIX_ACTIONS order, kinds without findings left out."""
        found = Counter(f.kind for f in self.findings)
        return {k: found[k] for k in FIX_ACTIONS if found[k]}

    @property
    def defects(self) -> int:
        """Findings that are not mere warnings; 0 means the split is clean."""
        return sum(f.kind not in WARNINGS for f in self.findings)


@dataclass(frozen=True)
class ImageProbe:
    """What the loader sees of an image file: stored (w, h), EXIF orientation, or the error."""

    stored: tuple[int, int] | None
    orientation: int = 1
    error: str | None = None

    @property
    def size(self) -> tuple[int, int] | None:
        """(w, h) after EXIF transposition, as `read_image_rgb` returns it."""
        if self.stored is None or self.orientation not in EXIF_SWAPS:
            return self.stored
        return self.stored[1], self.stored[0]


def probe_image(path: Path) -> ImageProbe:
    """Header, EXIF orientation and a decode (JPEGs at 1/8 scale, which still reads every byte)."""
    if not path.is_file():
        return ImageProbe(None, error="missing")
    try:
        with Image.open(path) as img:
            stored = (int(img.size[0]), int(img.size[1]))
            orientation = int(img.getexif().get(0x0112, 1) or 1)
            img.draft(img.mode, (max(1, stored[0] // 8), max(1, stored[1] // 8)))
            img.load()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError,
            Image.DecompressionBombError) as e:
        return ImageProbe(None, error=str(e).splitlines()[0] if str(e) else type(e).__name__)
    return ImageProbe(stored, orientation)


def check_dataset(
    annotations: Path, images: Path, *, num_queries: int = 100, workers: int | None = None,
    progress: ProgressFn | None = None,
) -> DatasetReport:
    """Check the COCO JSON `annotations` against the image folder `images`."""
    return check_coco(load_raw_coco(annotations), annotations=annotations, images=images,
                      num_queries=num_queries, workers=workers, progress=progress)


def check_coco(
    data: dict, *, annotations: Path, images: Path, num_queries: int = 100,
    workers: int | None = None, progress: ProgressFn | None = None,
) -> DatasetReport:
    """Every check on a raw COCO dict; `progress(done, total)` follows the image reads."""
    findings: list[Finding] = []
    plan = FixPlan()
    declared, sizes = _check_images(data["images"], images, findings, plan, workers, progress)
    cat_ids = _check_categories(data["categories"], findings, plan)
    per_image = _check_annotations(data["annotations"], cat_ids, declared, sizes, findings, plan)
    histogram = _image_counts(per_image, sizes, num_queries, findings)
    return DatasetReport(
        annotations=annotations, images=images, num_images=len(data["images"]),
        num_annotations=len(data["annotations"]), num_queries=num_queries,
        findings=findings, histogram=histogram, plan=plan,
    )


def _entry_problem(img: object) -> str | None:
    if not isinstance(img, dict):
        return "not an object"
    missing = [k for k in ("id", "file_name", "height", "width") if k not in img]
    if missing:
        return f"lacks {', '.join(missing)}"
    if not is_int(img["id"]):
        return f"id {img['id']!r:.40} is not an integer"
    if not isinstance(img["file_name"], str) or not img["file_name"]:
        return "file_name is not a string"
    if not all((image_side(img[k]) or 0) > 0 for k in ("height", "width")):
        return "height/width are not positive integers"
    return None


def _check_images(
    images: list, root: Path, findings: list[Finding], plan: FixPlan,
    workers: int | None, progress: ProgressFn | None,
) -> tuple[set, dict]:
    """Entries, duplicate ids, files and sizes. Returns (every usable declared id,
    {kept image id: (w, h) the loader will see})."""
    first = _image_entries(images, findings, plan)
    probes = _probe_all([root / images[i]["file_name"] for i in first.values()], workers,
                        progress)
    sizes: dict[object, tuple[int, int]] = {}
    for (image_id, i), probe in zip(first.items(), probes):
        size = _check_probe(images[i], probe, findings)
        if size is None:
            plan.drop_images.add(i)
            continue
        sizes[image_id] = size
        if size != (images[i]["width"], images[i]["height"]):
            plan.image_updates[i] = {"width": size[0], "height": size[1]}
    return set(first), sizes


def _image_entries(images: list, findings: list[Finding], plan: FixPlan) -> dict[object, int]:
    """{image id: index} of the well-formed entries, first of each id; the others dropped."""
    first: dict[object, int] = {}
    for i, img in enumerate(images):
        problem = _entry_problem(img)
        if problem is not None:
            findings.append(Finding(BAD_IMAGE_ENTRY, f"images[{i}] {problem}", _get(img, "id"),
                                    None, _get(img, "file_name")))
        elif img["id"] in first:
            detail = f"id also used by images[{first[img['id']]}]"
            findings.append(Finding(DUPLICATE_IMAGE_ID, detail, img["id"], file=img["file_name"]))
        else:
            first[img["id"]] = i
            continue
        plan.drop_images.add(i)
    return first


def _check_categories(categories: list, findings: list[Finding], plan: FixPlan) -> set[int]:
    """Category entries: an integer id, unique, a string name when there is one."""
    ids: set[int] = set()
    for i, cat in enumerate(categories):
        if not isinstance(cat, dict) or not is_int(cat.get("id")):
            findings.append(Finding(BAD_CATEGORY, f"categories[{i}] has no integer id"))
        elif "name" in cat and (not isinstance(cat["name"], str) or not cat["name"]):
            findings.append(Finding(BAD_CATEGORY, f"category {cat['id']}: name "
                                                  f"{cat['name']!r:.30} is not a string"))
        elif cat["id"] in ids:
            findings.append(Finding(DUPLICATE_CATEGORY_ID,
                                    f"category id {cat['id']} is used by an earlier one"))
        else:
            ids.add(cat["id"])
            continue
        plan.drop_categories.add(i)
    return ids


def _get(entry: object, key: str) -> object:
    return entry.get(key) if isinstance(entry, dict) else None


def _probe_all(paths: list[Path], workers: int | None,
               progress: ProgressFn | None) -> list[ImageProbe]:
    """probe_image over `paths` in threads (decoding releases the GIL), in order."""
    workers = workers or min(8, os.cpu_count() or 1)
    out: list[ImageProbe] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for probe in pool.map(probe_image, paths):
            out.append(probe)
            if progress is not None:
                progress(len(out), len(paths))
    return out


def _check_probe(img: dict, probe: ImageProbe, findings: list[Finding]) -> tuple[int, int] | None:
    """The (w, h) the loader will see, or None when the file is missing or unreadable."""
    image_id, name = img["id"], img["file_name"]
    if probe.size is None:
        kind = MISSING_IMAGE if probe.error == "missing" else UNREADABLE_IMAGE
        findings.append(Finding(kind, probe.error or "", image_id, file=name))
        return None
    declared = (img["width"], img["height"])
    if probe.size == declared:
        return probe.size
    real = f"{probe.size[0]}x{probe.size[1]}"
    if probe.stored == declared:
        detail = (f"EXIF orientation {probe.orientation}: the JSON has the stored size "
                  f"{declared[0]}x{declared[1]}, the loader sees {real}")
        findings.append(Finding(EXIF_ROTATED, detail, image_id, file=name))
    else:
        detail = f"the JSON says {declared[0]}x{declared[1]}, the file is {real}"
        findings.append(Finding(SIZE_MISMATCH, detail, image_id, file=name))
    return probe.size


def _check_annotations(
    anns: list, cat_ids: set, declared: set, sizes: dict, findings: list[Finding],
    plan: FixPlan,
) -> dict[object, list[bool]]:
    """Per-annotation checks; returns {kept image id: iscrowd of each kept annotation}."""
    seen: set = set()
    per_image: dict[object, list[bool]] = {}
    for i, ann in enumerate(anns):
        problem = _ann_problem(i, ann, seen, cat_ids, declared)
        if problem is not None:
            kind, detail = problem
            findings.append(Finding(kind, detail, _get(ann, "image_id"), _get(ann, "id")))
            plan.drop_annotations.add(i)
            continue
        seen.add(ann["id"])
        if ann["image_id"] not in sizes:  # its image is dropped (missing, unreadable...)
            plan.drop_annotations.add(i)
            continue
        if _check_geometry(i, ann, sizes[ann["image_id"]], findings, plan):
            per_image.setdefault(ann["image_id"], []).append(bool(ann.get("iscrowd", 0)))
    return per_image


def _ann_problem(i: int, ann: object, seen: set, cat_ids: set,
                 declared: set) -> tuple[str, str] | None:
    """Entry, id, image and category problems of an annotation: (kind, detail) or None."""
    if not isinstance(ann, dict) or not is_int(ann.get("id")) or not is_int(ann.get("image_id")):
        return BAD_ANN_ENTRY, f"annotations[{i}] is not an object with integer id and image_id"
    known_image = ann["image_id"] in declared
    if ann["id"] in seen:
        return DUPLICATE_ANN_ID, f"id {ann['id']} is used by an earlier annotation"
    if not known_image:
        return UNKNOWN_IMAGE, f"image_id {ann['image_id']!r} is not in 'images'"
    category = ann.get("category_id")
    if not is_int(category) or category not in cat_ids:
        return UNKNOWN_CATEGORY, f"category_id {category!r:.30} is not in 'categories'"
    if ann.get("iscrowd", 0) not in (0, 1) or isinstance(ann.get("iscrowd"), float):
        return BAD_ISCROWD, f"iscrowd {ann.get('iscrowd')!r:.30} is not 0 or 1"
    return None


def _check_geometry(i: int, ann: dict, size: tuple[int, int], findings: list[Finding],
                    plan: FixPlan) -> bool:
    """Segmentation, area and bbox checks of annotation `i`; False when --fix drops it."""
    width, height = size
    verdict = check_segmentation(ann.get("segmentation"), width, height)
    for kind, detail in verdict.problems:
        findings.append(Finding(kind, detail, ann["image_id"], ann["id"]))
    if verdict.drop:
        plan.drop_annotations.add(i)
        return False
    recompute = verdict.recompute
    area = ann.get("area", None)
    if area == 0:
        findings.append(Finding(ZERO_AREA, "the area field is 0 but the mask is not empty",
                                ann["image_id"], ann["id"]))
        recompute = True
    elif area is not None and not (
        isinstance(area, (int, float)) and not isinstance(area, bool) and 0 <= area < math.inf
    ):
        findings.append(Finding(BAD_AREA, f"area {area!r:.30} is not a finite number >= 0",
                                ann["image_id"], ann["id"]))
        recompute = True
    bbox_problem = check_bbox(ann.get("bbox"), width, height)
    if bbox_problem and not any(k == OUT_OF_IMAGE for k, _ in verdict.problems):
        findings.append(Finding(OUT_OF_IMAGE, bbox_problem, ann["image_id"], ann["id"]))
    if recompute or bbox_problem:
        segm = verdict.segmentation if verdict.segmentation is not None else ann["segmentation"]
        area, bbox = area_and_bbox(segm, height, width)
        update = {"area": area, "bbox": bbox}
        if verdict.segmentation is not None:
            update["segmentation"] = verdict.segmentation
        plan.ann_updates[i] = update
    return True


def _image_counts(per_image: dict, sizes: dict, num_queries: int,
                  findings: list[Finding]) -> dict[int, int]:
    """Crowd-only and over-queries warnings; returns the instances-per-image histogram."""
    histogram: Counter[int] = Counter()
    for image_id in sizes:
        crowd = per_image.get(image_id, [])
        n = sum(not c for c in crowd)
        histogram[n] += 1
        if crowd and n == 0:
            findings.append(Finding(CROWD_ONLY, f"{len(crowd)} crowd annotation(s), no other",
                                    image_id))
        if n > num_queries:
            findings.append(Finding(OVER_QUERIES, f"{n} instances > {num_queries} queries",
                                    image_id))
    return dict(sorted(histogram.items()))


def histogram_bins(histogram: dict[int, int], num_queries: int) -> list[tuple[str, int]]:
    """Group {instances: images} into rows: 0, 1, 2-4, 5-9, ..., up to Q, then > Q."""
    edges = [e for e in (0, 1, 2, 5, 10, 20, 50) if e <= num_queries] + [num_queries + 1]
    rows = []
    for lo, hi in zip(edges, edges[1:]):
        label = str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}"
        rows.append((label, sum(v for k, v in histogram.items() if lo <= k < hi)))
    rows.append((f"> {num_queries}", sum(v for k, v in histogram.items() if k > num_queries)))
    return rows
