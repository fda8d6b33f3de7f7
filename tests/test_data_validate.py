"""The reported cases of issue 25 and the validation rules: one line naming file and id for
broken data, a counted notice (and a run) for degenerate but valid data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_support import run_cli_process
from train_support import Recorder, make_dataset, train

from sparseinst_cli.data.coco import load_coco_checked
from sparseinst_cli.data.validate import validate_coco
from sparseinst_cli.data.validate_segm import clean_segmentation
from sparseinst_cli.errors import UserError


def edit(data_yaml: Path, change) -> Path:
    """Apply `change(dict)` to the train JSON of a make_dataset folder; returns the JSON."""
    path = data_yaml.parent / "annotations" / "train.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def nan_polygon(d: dict) -> None:
    d["annotations"][2]["segmentation"][0][3] = float("nan")


def short_rle(d: dict) -> None:
    d["annotations"][2]["segmentation"] = {"size": [96, 128], "counts": [10_000, 5_000, 300]}


def duplicate_image(d: dict) -> None:
    d["images"][2]["id"] = 2


@pytest.mark.parametrize("change, expected", [
    (nan_polygon, r"annotation 3 \(image 2\): a polygon has a non-finite coordinate \(nan\)"),
    (short_rle, r"annotation 3 \(image 2\): RLE counts cover 15300 pixels, not the 96x128"),
    (duplicate_image, r"images\[2\] \(0002.png\): id 2 is also the id of 0001.png"),
])
def test_reported_cases_end_in_one_line(tmp_path: Path, change, expected) -> None:
    path = edit(make_dataset(tmp_path), change)
    with pytest.raises(UserError, match=expected) as info:
        load_coco_checked(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert "data check --fix" in message


def test_nan_polygon_stops_train_with_exit_2(tmp_path: Path) -> None:
    data = make_dataset(tmp_path)
    path = edit(data, nan_polygon)
    result = run_cli_process("train", "--config", "small", "--data", data, "--iters", "3",
                             "--device", "cpu", "--project", tmp_path / "runs")
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {path}: annotation 3") and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()  # stopped before the run folder


def degenerate(d: dict) -> None:
    for ann in d["annotations"]:
        ann.pop("area")
    d["annotations"][1]["segmentation"].insert(0, [1, 2, 3, 4])  # first part a "bbox"
    d["annotations"][3]["segmentation"].append([5, 5, 5, 5, 5, 5])  # zero area
    d["annotations"][5]["segmentation"] = [[1, 1, 2, 2]]  # nothing usable left
    d["annotations"][6]["segmentation"][0][0] = -20.0  # partly outside: clipped


def test_degenerate_polygons_train_with_one_notice(tmp_path: Path) -> None:
    data = make_dataset(tmp_path)
    edit(data, degenerate)
    recorder = Recorder()
    train(data, tmp_path / "runs", recorder=recorder, iters=2)
    assert recorder.iterations[-1] == 2
    notices = [n for n in recorder.notices if n.startswith("train.json:")]
    assert notices == [
        "train.json: 3 polygon part(s) with fewer than 3 points or no area dropped, "
        "1 annotation(s) without a usable mask dropped, 1 polygon(s) clipped to the image, "
        "15 area(s) computed (as detectron2 does; `sparseinst data check` lists them)"]


def coco(**image) -> dict:
    img = {"id": 1, "file_name": "a.png", "width": 32, "height": 24, **image}
    return {"images": [img], "categories": [{"id": 1, "name": "a"}], "annotations": []}


@pytest.mark.parametrize("image, expected", [
    ({"width": 10**6, "height": 10**6}, "declares 1000000x1000000 pixels"),
    ({"width": 0}, "not positive integers"),
    ({"id": "a"}, "not an integer"),
])
def test_image_sizes_and_ids(image: dict, expected: str) -> None:
    with pytest.raises(UserError, match=expected):
        validate_coco(coco(**image), Path("x.json"))


def test_integral_float_sizes_are_accepted() -> None:
    data, notice = validate_coco(coco(width=32.0), Path("x.json"))
    assert data["images"][0]["width"] == 32 and notice is None


def test_many_problems_are_counted_per_kind() -> None:
    data = coco()
    data["annotations"] = [{"id": i, "image_id": 9, "category_id": 1, "segmentation": []}
                           for i in range(5)] + [{"id": 0, "image_id": 1, "category_id": 1}]
    with pytest.raises(UserError) as info:
        validate_coco(data, Path("x.json"))
    assert str(info.value).startswith(
        "x.json: 6 problems (unknown image: 5, duplicate annotation id: 1); first 3: "
        "annotation 0: image_id 9 is not in 'images'; annotation 1:")


@pytest.mark.parametrize("segm, error", [
    ([[0, 0, 10, 0, 10, 1e30]], "far outside"),
    ([[0, 0, 10, 0, 10, 10, 3]], "odd number"),
    ([0, 0, 10, 0, 10, 10], "flat list"),
    ({"size": [10**6, 10**6], "counts": [10**12]}, "differs from the image"),
    ({"size": [24, 32], "counts": [-1, 769]}, "negative run"),
    ({"size": [24, 32], "counts": "\u00e9"}, "not a valid COCO RLE string"),
])
def test_broken_segmentations(segm: object, error: str) -> None:
    assert error in clean_segmentation(segm, 32, 24).error
