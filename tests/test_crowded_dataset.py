"""The synthetic crowded-nuclei dataset: deterministic, crowded, small, loadable."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from file_support import tree_digest
from pycocotools import mask as mask_util

from sparseinst_cli.data.coco import CocoInstances, CocoTrainDataset, load_coco_json
from sparseinst_cli.data.datasets import resolve_split
from sparseinst_cli.data.synthetic.crowded import (
    MAX_DIAMETER,
    MIN_VISIBLE_PIXELS,
    make_crowded_dataset,
)
from sparseinst_cli.data.transforms import TransformConfig

SMALL = {"num_train": 6, "num_val": 2}


@pytest.fixture(scope="module")
def crowded_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crowded")
    make_crowded_dataset(root, **SMALL)
    return root


def test_generation_is_deterministic_and_reused(crowded_root, tmp_path):
    make_crowded_dataset(tmp_path, **SMALL)
    assert tree_digest(tmp_path) == tree_digest(crowded_root)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    make_crowded_dataset(tmp_path, **SMALL)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    make_crowded_dataset(tmp_path, **{**SMALL, "seed": 1})  # changed: regenerated
    assert tree_digest(tmp_path) != tree_digest(crowded_root)


def test_counts_sizes_and_crowding(crowded_root):
    coco = load_coco_json(crowded_root / "annotations" / "train.json")
    assert [c["name"] for c in coco.dataset["categories"]] == ["nucleus"]
    per_image = Counter(a["image_id"] for a in coco.dataset["annotations"])
    assert all(30 <= per_image[i] <= 80 for i in coco.imgs)
    sides = {(img["height"], img["width"]) for img in coco.imgs.values()}
    assert all(320 <= s <= 400 for hw in sides for s in hw) and len(sides) > 1
    areas = np.array([a["area"] for a in coco.dataset["annotations"]])
    extent = np.array([max(a["bbox"][2:]) for a in coco.dataset["annotations"]])
    assert areas.min() >= MIN_VISIBLE_PIXELS and extent.max() <= MAX_DIAMETER + 1
    assert 8 <= np.median(extent) <= 30
    assert (areas < 32 ** 2).mean() >= 0.95  # COCO "small"
    touching = 0
    for img_id, img in coco.imgs.items():
        masks = [coco.annToMask(a) for a in coco.imgToAnns[img_id]]
        assert all(m.shape == (img["height"], img["width"]) for m in masks)
        stack = np.stack(masks).astype(np.int32)
        assert stack.sum(0).max() == 1  # visible parts never overlap
        for a in coco.imgToAnns[img_id]:  # stored area and bbox are the mask's
            rle = a["segmentation"]
            assert a["area"] == float(mask_util.area(rle))
        labels = (stack * np.arange(1, len(masks) + 1)[:, None, None]).sum(0)
        right = (labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] > 0) & (labels[:, :-1] > 0)
        down = (labels[1:] != labels[:-1]) & (labels[1:] > 0) & (labels[:-1] > 0)
        touching += int(right.sum() + down.sum())
    assert touching > 100 * len(coco.imgs)  # many nuclei share borders without a gap


def test_grey_images_load_through_the_coco_loader(crowded_root):
    spec = resolve_split(str(crowded_root / "data.yaml"), "val")
    src = CocoInstances(annotations=spec.annotations, images=spec.images, names=spec.names)
    assert src.category_ids == [1] and src.class_names == ["nucleus"]
    ds = CocoTrainDataset(src, transform=TransformConfig(min_sizes=(352,), max_size=600))
    image, target = ds[0]
    assert image.shape[0] == 3 and bool((image[0] == image[1]).all())  # grey
    assert image.shape[1:] == target["masks"].shape[1:] and len(target["labels"]) >= 30


def test_resolve_crowded_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEINST_DATASETS", str(tmp_path))
    import sparseinst_cli.data.datasets as datasets

    monkeypatch.setattr(datasets, "make_crowded_dataset",
                        lambda root: make_crowded_dataset(root, num_train=1, num_val=1))
    spec = datasets.resolve_split("crowded", "val")
    assert spec.annotations == tmp_path / "crowded" / "annotations" / "val.json"
    assert spec.name == "crowded/val"
    assert json.loads((tmp_path / "crowded" / "annotations" / "val.json").read_text())["images"]
