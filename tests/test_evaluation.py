"""COCO mask AP: perfect, hand-computed, empty and direct-pycocotools cases."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sparseinst_cli.evaluation import evaluate_segm, instances_to_coco_results

H = W = 120
CATS = {5: "apple", 9: "pear"}  # contiguous 0 -> 5, 1 -> 9


def square(y0: int, x0: int, size: int = 40) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y0 + size, x0:x0 + size] = True
    return m


GT = {1: [(5, square(10, 10)), (9, square(60, 60))], 2: [(9, square(20, 50))]}


def make_gt() -> COCO:
    """Medium-sized (40 x 40 = 1600 px) squares only: small and large buckets are empty."""
    anns = []
    for image_id, objects in GT.items():
        for cat, mask in objects:
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat,
                         "segmentation": rle, "area": float(mask.sum()), "iscrowd": 0,
                         "bbox": [float(v) for v in mask_util.toBbox(rle)]})
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "height": H, "width": W} for i in GT],
        "annotations": anns,
        "categories": [{"id": c, "name": n} for c, n in CATS.items()],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def predict(image_id: int, objects: list[tuple[int, np.ndarray]], scores: list[float]) -> list:
    masks = np.stack([m for _, m in objects])
    labels = [list(CATS).index(c) for c, _ in objects]
    return instances_to_coco_results(image_id, masks, scores, labels, list(CATS))


def test_perfect_predictions_give_100():
    results = predict(1, GT[1], [0.9, 0.8]) + predict(2, GT[2], [0.7])
    out = evaluate_segm(make_gt(), results)
    for key in ("AP", "AP50", "AP75", "APm", "AR1", "AR10", "AR100"):
        assert out[key] == pytest.approx(100.0), key
    assert out["APs"] is None and out["APl"] is None
    assert out["per_class"] == {"apple": pytest.approx(100.0), "pear": pytest.approx(100.0)}


def test_wrong_class_hand_computed():
    """Image 1 only: the pear is called an apple with the higher score.

    apple: detections [pear-as-apple 0.95 (FP), apple 0.9 (TP)] -> precision [0, 0.5], made
    monotone [0.5, 0.5], at every recall threshold 0.5 -> AP 50. pear: no detection -> AP 0.
    mAP = 25 at every IoU. AR1: the top apple detection is the FP -> 0; AR100 = (1 + 0) / 2.
    """
    apple, pear = GT[1][0][1], GT[1][1][1]
    results = instances_to_coco_results(1, np.stack([pear, apple]), [0.95, 0.9], [0, 0], [5, 9])
    out = evaluate_segm(make_gt(), results, image_ids=[1])
    assert out["AP"] == pytest.approx(25.0)
    assert out["AP50"] == pytest.approx(25.0) and out["AP75"] == pytest.approx(25.0)
    assert out["AR1"] == pytest.approx(0.0) and out["AR100"] == pytest.approx(50.0)
    assert out["per_class"] == {"apple": pytest.approx(50.0), "pear": pytest.approx(0.0)}


def test_matches_pycocotools_directly():
    rng = np.random.default_rng(0)
    results = []
    for image_id, objects in GT.items():
        for cat, mask in objects:  # jittered masks, random scores, one false positive each
            shifted = np.roll(mask, int(rng.integers(-8, 9)), axis=1)
            results += predict(image_id, [(cat, shifted)], [float(rng.random())])
        results += predict(image_id, [(5, square(70, 0, 30))], [float(rng.random())])
    gt = make_gt()
    out = evaluate_segm(gt, json.loads(json.dumps(results)))
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
    for key, stat in zip(keys, ev.stats, strict=False):
        assert out[key] == (None if stat < 0 else pytest.approx(stat * 100)), key
    assert 0 < out["AP"] < 100


def test_empty_results():
    out = evaluate_segm(make_gt(), [])
    assert out["AP"] == 0.0 and out["AP50"] == 0.0 and out["AR100"] == 0.0
    assert out["APs"] is None and out["APl"] is None
    assert out["per_class"] == {"apple": 0.0, "pear": 0.0}


def test_evaluate_from_path(tmp_path):
    gt = make_gt()
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt.dataset))
    out = evaluate_segm(path, predict(2, GT[2], [0.5]), image_ids=[2])
    assert out["AP"] == pytest.approx(100.0)
    assert out["per_class"]["apple"] is None  # no apple in image 2


def test_results_are_json_ready_and_accept_tensors():
    masks = torch.from_numpy(np.stack([square(0, 0, 10), square(50, 50, 20)]))
    res = instances_to_coco_results(
        3, masks, torch.tensor([0.5, 0.25]), torch.tensor([1, 0]), {0: 5, 1: 9}
    )
    assert [r["category_id"] for r in res] == [9, 5]
    assert res[0]["image_id"] == 3 and res[1]["score"] == 0.25
    decoded = mask_util.decode(json.loads(json.dumps(res))[1]["segmentation"])
    np.testing.assert_array_equal(decoded.astype(bool), square(50, 50, 20))
    assert instances_to_coco_results(3, np.zeros((0, H, W), bool), [], [], [5, 9]) == []
