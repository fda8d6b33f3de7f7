"""A classical instance-segmentation baseline: Otsu threshold + distance-transform watershed.

Segments every image of a split (val by default) of grey or colour images of objects brighter or
darker than their background (the smaller side of the threshold is taken as the objects), and
writes a COCO results JSON (compressed RLE, one category) that `sparseinst eval --results`
scores, so a trained model and this baseline meet on equal terms:

    python benchmarks/watershed_baseline.py --data crowded --out runs/watershed/results.json
    sparseinst eval --results runs/watershed/results.json --data crowded

Per image: grey -> Gaussian blur -> Otsu threshold -> holes filled -> Euclidean distance
transform, smoothed -> seeds at its local maxima (at least --min-distance px apart) ->
watershed of the inverted distance from the seeds, restricted to the foreground -> segments
smaller than --min-area px dropped. A segment's score is its mean brightness above the Otsu
threshold, scaled to [0, 1]: brighter, more certain objects rank first. OpenCV and SciPy only.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_util
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from sparseinst_cli.data.coco import load_coco_json, read_image_rgb  # noqa: E402
from sparseinst_cli.data.datasets import SplitSpec, resolve_split  # noqa: E402
from sparseinst_cli.evaluation import evaluate_segm  # noqa: E402


@dataclass(frozen=True)
class WatershedParams:
    sigma: float = 0.5  # Gaussian blur before thresholding, px
    min_distance: int = 3  # seeds closer than this (px) merge
    min_area: int = 10  # smaller segments are dropped, px


def segment(gray: np.ndarray, params: WatershedParams = WatershedParams()) -> tuple[
        np.ndarray, np.ndarray]:
    """Label map int32 [H, W] (0 background) and smoothed image float32 [H, W] of a uint8 [H, W]."""
    smooth = cv2.GaussianBlur(gray, (0, 0), params.sigma) if params.sigma > 0 else gray
    threshold, fg = cv2.threshold(smooth, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # Objects are the smaller class: dark objects on a bright background (phase contrast,
    # bright field) make the bright side the larger one.
    dark_objects = fg.mean() > 0.5
    fg = ndimage.binary_fill_holes(~fg.astype(bool) if dark_objects else fg.astype(bool))
    dist = cv2.distanceTransform(fg.astype(np.uint8), cv2.DIST_L2, 5)
    dist = ndimage.gaussian_filter(dist, 1.0)
    size = 2 * params.min_distance + 1
    peaks = (dist == ndimage.maximum_filter(dist, size=size)) & (dist > 1.0) & fg
    seeds, count = ndimage.label(peaks, structure=np.ones((3, 3)))
    labels = flood(dist, seeds, fg)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    labels[areas[labels] < params.min_area] = 0
    contrast = smooth.astype(np.float32) - float(threshold)
    return labels, -contrast if dark_objects else contrast


def flood(height: np.ndarray, seeds: np.ndarray, mask: np.ndarray, step: float = 0.5) -> np.ndarray:
    """Watershed by flooding: seed labels int [H, W] grow into `mask` from the highest `height`
    float [H, W] down, in levels `step` apart; where two basins meet the higher label wins.
    Returns labels int32 [H, W]; mask pixels no seed reaches stay 0."""
    labels = seeds.astype(np.float32)  # cv2.dilate takes float32; labels < 2**24 are exact
    kernel = np.ones((3, 3), np.uint8)
    for level in np.arange(float(height.max()), -step, -step):
        allowed = mask & (height >= level)
        while True:
            grown = cv2.dilate(labels, kernel)
            new = allowed & (labels == 0) & (grown > 0)
            if not new.any():
                break
            labels[new] = grown[new]
    return labels.astype(np.int32)


def image_results(
    gray: np.ndarray, image_id: int, category_id: int,
    params: WatershedParams = WatershedParams(),
) -> list[dict]:
    """COCO result dicts (RLE segmentation, score in [0, 1]) of one grey image uint8 [H, W]."""
    labels, above = segment(gray, params)
    out = []
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = np.zeros(labels.shape, np.uint8)
        mask[box] = labels[box] == k
        rle = mask_util.encode(np.asfortranarray(mask))
        score = float(np.clip(above[box][labels[box] == k].mean() / 255.0, 0.0, 1.0))
        out.append({"image_id": image_id, "category_id": category_id,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                    "score": round(score, 5)})
    return out


def split_results(split: SplitSpec, params: WatershedParams = WatershedParams(),
                  category_id: int | None = None) -> list[dict]:
    """COCO results of every image of a split; category_id defaults to its first category."""
    coco = load_coco_json(split.annotations)
    if category_id is None:
        category_id = min(coco.cats)
    results = []
    for image_id in sorted(coco.imgs):
        rgb = read_image_rgb(split.images / coco.imgs[image_id]["file_name"])
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        results.extend(image_results(gray, image_id, category_id, params))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="crowded", help="DATA.yaml or built-in name")
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", type=Path, default=Path("runs/watershed/results.json"))
    parser.add_argument("--sigma", type=float, default=WatershedParams.sigma)
    parser.add_argument("--min-distance", type=int, default=WatershedParams.min_distance)
    parser.add_argument("--min-area", type=int, default=WatershedParams.min_area)
    parser.add_argument("--category-id", type=int, default=None,
                        help="category of every segment (default: the split's first)")
    args = parser.parse_args(argv)
    split = resolve_split(args.data, args.split)
    params = WatershedParams(args.sigma, args.min_distance, args.min_area)
    results = split_results(split, params, args.category_id)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results))
    metrics = evaluate_segm(load_coco_json(split.annotations), results)
    print(f"{len(results)} segments in {args.out}; mask AP {metrics['AP']:.1f}, "
          f"AP50 {metrics['AP50']:.1f}, AP75 {metrics['AP75']:.1f} on {split.name}")
    print(f"score it: sparseinst eval --results {args.out} --data {args.data}")


if __name__ == "__main__":
    main()
