"""COCO mask AP with pycocotools, returned as a plain dict."""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sparseinst_cli.data.coco import load_coco_json

STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


def instances_to_coco_results(
    image_id: int,
    masks: np.ndarray | torch.Tensor,
    scores: Sequence[float] | np.ndarray | torch.Tensor,
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    contiguous_to_category_id: Sequence[int] | Mapping[int, int],
) -> list[dict]:
    """Detections of one image -> COCO result dicts with RLE masks.

    masks: bool [N, H, W] at the original image size; scores [N]; labels [N] contiguous.
    """
    masks = _to_numpy(masks).astype(np.uint8)
    scores, labels = _to_numpy(scores), _to_numpy(labels)
    if len(masks) == 0:
        return []
    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    results = []
    for rle, score, label in zip(rles, scores, labels, strict=True):
        rle["counts"] = rle["counts"].decode("ascii")
        results.append({
            "image_id": int(image_id),
            "category_id": int(contiguous_to_category_id[int(label)]),
            "segmentation": rle,
            "score": float(score),
        })
    return results


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _empty_results(coco_gt: COCO) -> COCO:
    """A result index with no detections (COCO.loadRes rejects an empty list)."""
    res = COCO()
    res.dataset = {"images": list(coco_gt.dataset["images"]),
                   "categories": copy.deepcopy(coco_gt.dataset["categories"]),
                   "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        res.createIndex()
    return res


def run_cocoeval(
    coco_gt: COCO, results: list[dict], image_ids: Sequence[int] | None = None
) -> COCOeval:
    """Evaluate, accumulate and summarise segm results quietly; returns the COCOeval."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(results)) if results else _empty_results(coco_gt)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def per_class_ap(ev: COCOeval, names: Sequence[str]) -> dict[str, float | None]:
    """AP (0-100) per category from `eval['precision']` [T, R, K, A, M] (all areas, 100 dets)."""
    precision = ev.eval["precision"]
    out: dict[str, float | None] = {}
    for k, name in enumerate(names):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[name] = float(p.mean() * 100) if p.size else None
    return out


def evaluate_segm(
    coco_gt: COCO | str | Path, results: list[dict], *, image_ids: Sequence[int] | None = None
) -> dict[str, Any]:
    """COCO mask AP of `results` (COCO result dicts) against `coco_gt`.

    Returns AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100 on a 0-100 scale (None where
    pycocotools reports -1, e.g. a size bucket without ground truth) and `per_class`
    {class name: AP or None}. `image_ids` restricts the evaluation to those images.
    """
    if not isinstance(coco_gt, COCO):
        coco_gt = load_coco_json(coco_gt)
    ev = run_cocoeval(coco_gt, results, image_ids)
    out: dict[str, Any] = {
        key: (None if stat < 0 else float(stat) * 100) for key, stat in zip(
            STAT_KEYS, ev.stats[: len(STAT_KEYS)], strict=True)
    }
    cats = [coco_gt.cats[c] for c in ev.params.catIds]
    names = [str(c.get("name", c["id"])) for c in cats]
    if len(set(names)) != len(names):
        names = [f"{n} ({c['id']})" for n, c in zip(names, cats, strict=True)]
    out["per_class"] = per_class_ap(ev, names)
    return out
