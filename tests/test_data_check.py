"""`sparseinst data check`: every planted defect is found, and `--fix` output loads and trains."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import run_cli_process
from PIL import Image
from pycocotools import mask as mask_util
from typer.testing import CliRunner

from sparseinst_cli.cli.app import app
from sparseinst_cli.data import check as chk
from sparseinst_cli.data.check import check_dataset, histogram_bins, load_raw_coco
from sparseinst_cli.data.check_segm import (
    BAD_POLYGON,
    BAD_SEGMENTATION,
    OUT_OF_IMAGE,
    ZERO_AREA,
    check_rle,
    clip_polygon,
    rle_counts,
)
from sparseinst_cli.data.coco import CocoInstances, CocoTrainDataset
from sparseinst_cli.data.fix import default_fixed_path, write_fixed
from sparseinst_cli.data.transforms import TransformConfig

S = 64  # side of the good images
QUERIES = 4  # small, so that one image has more instances than queries


def square(x: float, y: float, side: float = 8) -> list[float]:
    return [x, y, x + side, y, x + side, y + side, x, y + side]


def ann(ann_id: int, image_id: int, segm: object, category: int = 1, crowd: int = 0) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category, "iscrowd": crowd,
            "segmentation": segm}


def save(path: Path, w: int, h: int, exif_orientation: int | None = None) -> None:
    rgb = np.random.default_rng(len(path.name)).integers(0, 255, (h, w, 3), dtype=np.uint8)
    if exif_orientation is None:
        Image.fromarray(rgb).save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        Image.fromarray(rgb).save(path, exif=exif, quality=95)


def image(image_id: int, name: str, w: int = S, h: int = S) -> dict:
    return {"id": image_id, "file_name": name, "width": w, "height": h}


# (kind, image_id, ann_id) of every planted defect; anything else found is a false positive.
PLANTED = {
    (chk.BAD_IMAGE_ENTRY, 10, None),
    (chk.DUPLICATE_IMAGE_ID, 1, None),
    (chk.MISSING_IMAGE, 4, None),
    (chk.UNREADABLE_IMAGE, 5, None),
    (chk.SIZE_MISMATCH, 6, None),
    (chk.EXIF_ROTATED, 7, None),
    (chk.CROWD_ONLY, 8, None),
    (chk.OVER_QUERIES, 9, None),
    (chk.BAD_ANN_ENTRY, None, None),
    (chk.DUPLICATE_ANN_ID, 2, 1),
    (chk.UNKNOWN_IMAGE, 777, 21),
    (chk.UNKNOWN_CATEGORY, 3, 22),
    (BAD_POLYGON, 1, 23),  # 2 points, next to a good part: only the part goes
    (BAD_POLYGON, 2, 24),  # odd coordinate count, the only part: the annotation goes
    (ZERO_AREA, 3, 25),
    (OUT_OF_IMAGE, 1, 26),  # partly: clipped
    (OUT_OF_IMAGE, 2, 27),  # entirely: dropped
    (BAD_SEGMENTATION, 3, 28),
    (chk.BAD_CATEGORY, None, None),
    (chk.DUPLICATE_CATEGORY_ID, None, None),
    (chk.BAD_ISCROWD, 3, 29),
    (chk.BAD_AREA, 2, 3),  # area -5 on a good annotation: recomputed
}


def write_dataset(root: Path) -> Path:
    """Good images 1-3 plus one image or annotation per defect; returns the DATA.yaml."""
    images = root / "images"
    images.mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png", "crowd.png", "many.png"):
        save(images / name, S, S)
    save(images / "small.png", S, 48)  # the JSON says 64x64
    save(images / "rotated.jpg", S, 48, exif_orientation=6)  # the loader sees 48x64
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = [ann(1, 1, [square(4, 4)]), ann(2, 1, [square(20, 20), square(40, 40)], category=2),
            {**ann(3, 2, [square(10, 30, 12)]), "area": -5},
            ann(4, 3, [square(30, 10)], category=2),
            ann(5, 3, _rle(), crowd=1), ann(6, 6, [square(4, 4)]), ann(7, 7, [square(4, 4)]),
            ann(8, 8, _rle(), crowd=1), ann(9, 4, [square(4, 4)]), ann(10, 5, [square(4, 4)])]
    good += [ann(11 + k, 9, [square(4 + 10 * k, 4)]) for k in range(QUERIES + 1)]
    bad = [ann(1, 2, [square(8, 8)]), ann(21, 777, [square(4, 4)]),
           ann(22, 3, [square(4, 4)], category=99),
           ann(23, 1, [square(4, 20), [1, 1, 5, 5]]), ann(24, 2, [[1, 1, 10, 1, 10, 10, 3]]),
           ann(25, 3, [[1, 1, 5, 1, 9, 1]]), ann(26, 1, [square(56, 30, 16)]),
           ann(27, 2, [square(100, 100)]), ann(28, 3, {"size": [32, 32], "counts": "PPYo1"}),
           ann(29, 3, [square(4, 4)], crowd=2),
           "not an annotation"]
    data = {
        "info": {"description": "planted defects"},
        "images": [image(1, "a.png"), image(2, "b.png"), image(3, "c.png"),
                   image(4, "missing.png"), image(5, "corrupt.png"), image(6, "small.png"),
                   image(7, "rotated.jpg", S, 48), image(8, "crowd.png"), image(9, "many.png"),
                   image(1, "a-again.png"), {"id": 10, "file_name": "x.png", "width": S}],
        "annotations": good + bad,
        "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"},
                       {"id": "3", "name": "three"}, {"id": 2, "name": "two again"}],
    }
    (root / "train.json").write_text(json.dumps(data))
    yaml_path = root / "data.yaml"
    yaml_path.write_text("train: {images: images, annotations: train.json}\n")
    return yaml_path


def _rle() -> dict:
    mask = np.zeros((S, S), np.uint8)
    mask[40:50, 40:50] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    return {"size": [S, S], "counts": rle["counts"].decode("ascii")}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "ds")


def test_every_planted_defect_is_found_and_nothing_else(dataset: Path) -> None:
    report = check_dataset(dataset.parent / "train.json", dataset.parent / "images",
                           num_queries=QUERIES, workers=2)
    found = {(f.kind, f.image_id, f.ann_id) for f in report.findings}
    assert found == PLANTED
    assert len(report.findings) == len(PLANTED)  # one finding per planted defect
    assert report.defects == len(PLANTED) - 2  # crowd-only and over-queries are warnings
    exif = next(f for f in report.findings if f.kind == chk.EXIF_ROTATED)
    assert "orientation 6" in exif.detail
    # kept images 1, 2, 3, 6, 7, 8, 9 -> instances 4, 1, 1, 1, 1, 0 (crowd), 5
    assert report.histogram == {0: 1, 1: 4, 4: 1, 5: 1}
    assert dict(histogram_bins(report.histogram, QUERIES)) == {
        "0": 1, "1": 4, "2-4": 1, "> 4": 1}


def test_fix_writes_a_clean_copy_that_loads_and_trains(dataset: Path) -> None:
    original = dataset.parent / "train.json"
    before = original.read_bytes()
    raw = load_raw_coco(original)
    report = chk.check_coco(raw, annotations=original, images=dataset.parent / "images",
                            num_queries=QUERIES)
    fixed = write_fixed(raw, report.plan, original=original)
    assert fixed == default_fixed_path(original) == dataset.parent / "train.fixed.json"
    assert original.read_bytes() == before
    again = check_dataset(fixed, dataset.parent / "images", num_queries=QUERIES)
    assert again.defects == 0 and {f.kind for f in again.findings} == chk.WARNINGS

    data = json.loads(fixed.read_text())
    assert data["info"] == {"description": "planted defects"}
    sizes = {i["id"]: (i["width"], i["height"]) for i in data["images"]}
    assert sizes == {1: (S, S), 2: (S, S), 3: (S, S), 6: (S, 48), 7: (48, S), 8: (S, S),
                     9: (S, S)}
    anns = {a["id"]: a for a in data["annotations"]}
    assert set(anns) == {1, 2, 3, 4, 5, 6, 7, 8, *range(11, 16), 23, 26}
    assert anns[23]["segmentation"] == [square(4, 20)] and anns[23]["area"] == 64
    assert anns[26]["segmentation"] == [[56, 30, 64, 30, 64, 46, 56, 46]]
    assert anns[26]["bbox"] == [56, 30, 8, 16]

    source = CocoInstances(annotations=fixed, images=dataset.parent / "images")
    train = CocoTrainDataset(source, transform=TransformConfig(), seed=0)
    assert len(train) == 6  # the crowd-only image is skipped
    for index in range(len(train)):
        img, target = train[index]
        assert img.dtype == torch.uint8 and img.shape[0] == 3
        assert target["masks"].shape[1:] == img.shape[1:]
        assert len(target["labels"]) == len(target["masks"]) > 0


def test_clip_polygon() -> None:
    inside = np.array([[1, 1], [5, 1], [5, 5]], float)
    np.testing.assert_allclose(clip_polygon(inside, 10, 10), inside)
    square_out = np.array([[8, 2], [14, 2], [14, 6], [8, 6]], float)
    np.testing.assert_allclose(clip_polygon(square_out, 10, 10),
                               [[8, 2], [10, 2], [10, 6], [8, 6]])
    assert clip_polygon(np.array([[20, 20], [30, 20], [30, 30]], float), 10, 10).shape == (0, 2)


def test_rle_checks() -> None:
    mask = np.zeros((7, 5), np.uint8)
    mask[2:5, 1:3] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    assert rle_counts(rle["counts"]) == [9, 3, 4, 3, 16]
    good = {"size": [7, 5], "counts": rle["counts"].decode("ascii")}
    assert check_rle(good, 5, 7).problems == []
    assert check_rle({"size": [7, 5], "counts": [9, 3, 4, 3, 16]}, 5, 7).problems == []
    short = check_rle({"size": [7, 5], "counts": [9, 3, 4]}, 5, 7)  # decoding would overrun
    assert short.drop and "cover 16 pixels" in short.problems[0][1]
    assert check_rle({"counts": "PPYo1"}, 5, 7).drop


def run_cli(*args: object) -> subprocess.CompletedProcess:
    return run_cli_process("data", "check", *args, timeout=120,
                           env={**os.environ, "COLUMNS": "200"})


def test_cli_exit_status_fix_and_bad_data(dataset: Path) -> None:
    original = dataset.parent / "train.json"
    before = original.read_bytes()
    out = dataset.parent / "clean.json"
    result = run_cli("--data", dataset, "--num-queries", QUERIES, "--out", out)
    assert result.returncode == 1, result.stderr
    for kind in chk.FIX_ACTIONS:
        assert kind in result.stdout
    assert out.is_file() and original.read_bytes() == before

    fixed_yaml = dataset.parent / "fixed.yaml"
    fixed_yaml.write_text("train: {images: images, annotations: clean.json}\n")
    clean = CliRunner().invoke(app, ["data", "check", "--data", str(fixed_yaml),
                                     "--num-queries", str(QUERIES)])
    assert clean.exit_code == 0, clean.output
    assert "train: clean, 2 warning(s)" in clean.output

    result = run_cli("--data", dataset.parent / "nope.yaml")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.yaml" in lines[0] and "Traceback" not in result.stderr
