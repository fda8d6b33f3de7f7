"""`sparseinst eval`: AP equal to pycocotools on the written results, hand-made known AP, rows,
parallel processes, results files and user errors."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_support import run_cli
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sparseinst_cli.loading.coco_classes import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from sparseinst_cli.predictor import Predictor

DATA = Path(__file__).parent / "data"
SIZE = "160"  # short side: tiny inputs keep the R-50 fast
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def rle(mask: np.ndarray) -> dict:
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def write_split(root: Path, images: dict[int, tuple[str, int, int]], anns: list[tuple],
                categories: list[tuple[int, str]]) -> Path:
    """A DATA.yaml whose val split has `images` {id: (file, h, w)} and `anns` [(img, cat, mask)]."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    coco = {
        "images": [{"id": i, "file_name": f, "height": h, "width": w}
                   for i, (f, h, w) in images.items()],
        "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "segmentation": rle(m),
                         "area": float(m.sum()), "iscrowd": 0,
                         "bbox": [float(v) for v in mask_util.toBbox(rle(m))]}
                        for k, (i, c, m) in enumerate(anns)],
        "categories": [{"id": c, "name": n} for c, n in categories],
    }
    (root / "val.json").write_text(json.dumps(coco))
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"val": {"images": "images", "annotations": "val.json"}}))
    return data


@pytest.fixture(scope="module")
def synth(tmp_path_factory, r50_giam_official):
    """An official-layout R-50 G-IAM checkpoint with synthetic weights (conftest), and a
    two-image COCO split whose ground truth is made from some of that model's own predictions
    (so AP is neither 0 nor 100)."""
    root = tmp_path_factory.mktemp("eval")
    (root / "r50.pth").symlink_to(r50_giam_official)
    photo = np.asarray(Image.open(DATA / "000000006471.jpg").convert("RGB"))
    (root / "images").mkdir()
    Image.fromarray(photo).save(root / "images" / "a.png")
    Image.fromarray(photo[:, ::-1]).save(root / "images" / "b.png")
    predictor = Predictor(root / "r50.pth", "r50_giam", min_size=int(SIZE))
    anns = []
    for image_id, name in ((1, "a.png"), (2, "b.png")):
        inst = predictor.predict(root / "images" / name).instances
        for k in range(0, 30, 3):  # every third of the first 30 detections, some shifted
            mask = inst.masks[k].numpy()
            anns.append((image_id, COCO_CATEGORY_IDS[int(inst.labels[k])],
                         np.roll(mask, 12 * (k % 2), axis=1)))
    h, w = photo.shape[:2]
    data = write_split(root, {1: ("a.png", h, w), 2: ("b.png", h, w)}, anns,
                       list(zip(COCO_CATEGORY_IDS, COCO_CLASS_NAMES)))
    return root, data


def test_eval_equals_pycocotools_on_its_results_file(synth, tmp_path, monkeypatch, capsys):
    root, data = synth
    summary = tmp_path / "ap.json"
    code, out, err = run_cli(
        ["eval", "-w", root / "r50.pth", "-c", "r50_giam", "--data", data, "--size", SIZE,
         "--project", tmp_path / "runs", "--json", summary, "--per-class"], monkeypatch, capsys)
    assert code == 0, err
    run = tmp_path / "runs" / "exp"
    (ours,) = json.loads(summary.read_text())
    assert set(ours) == {"model", *AP_KEYS} and ours["model"] == "r50_giam"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(data.parent / "val.json"))
        ev = COCOeval(gt, gt.loadRes(str(run / "results.json")), iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    direct = [None if s < 0 else float(s) * 100 for s in ev.stats[:6]]
    assert [ours[k] for k in AP_KEYS] == direct  # identical, not approximately equal
    assert 0 < ours["AP"] < 100
    metrics = json.loads((run / "metrics.json").read_text())[0]
    assert metrics["AR100"] == float(ev.stats[8]) * 100 and metrics["images"] == 2
    assert "COCO mask AP" in out and "mask AP per class" in out and "broccoli" in out


def test_several_weights_give_one_row_each_and_processes_merge(
    synth, tmp_path, monkeypatch, capsys
):
    """Two checkpoints -> two rows; --gpus 2 (CPU processes here) gives the same numbers."""
    root, data = synth
    shutil.copy(root / "r50.pth", tmp_path / "copy.pth")
    summary = tmp_path / "ap.json"
    args = ["eval", "-w", root / "r50.pth", "-w", tmp_path / "copy.pth", "-c", "r50_giam",
            "--data", data, "--size", SIZE, "--project", tmp_path, "--name", "two"]
    code, out, err = run_cli([*args, "--json", summary], monkeypatch, capsys)
    assert code == 0, err
    rows = json.loads(summary.read_text())
    assert [r["model"] for r in rows] == ["r50_giam (r50.pth)", "r50_giam (copy.pth)"]
    assert rows[0]["AP"] == rows[1]["AP"]
    assert (tmp_path / "two" / "results_r50_giam_r50.pth.json").is_file()
    par = tmp_path / "par.json"
    code, _, err = run_cli(
        ["eval", "-w", root / "r50.pth", "-c", "r50_giam", "--data", data, "--size", SIZE,
         "--project", tmp_path, "--name", "two", "--gpus", "2", "--json", par],
        monkeypatch, capsys)
    assert code == 0, err
    merged = json.loads((tmp_path / "two2" / "results.json").read_text())  # name taken: two2
    single = json.loads((tmp_path / "two" / "results_r50_giam_r50.pth.json").read_text())
    count = lambda results: sorted(Counter(r["image_id"] for r in results).items())  # noqa: E731
    assert count(merged) == count(single) == [(1, 100), (2, 100)]
    # Each process runs on 1 of the 2 CPU threads: float sums differ in the last bits, which
    # can flip a few mask pixels, so AP agrees closely rather than exactly.
    parallel = json.loads(par.read_text())[0]
    assert all(parallel[k] == pytest.approx(rows[0][k], abs=0.1) for k in ("AP", "AP50"))


def squares() -> tuple[np.ndarray, np.ndarray]:
    a, b = np.zeros((100, 100), bool), np.zeros((100, 100), bool)
    a[10:50, 10:50] = True  # 40 x 40 = 1600 px: "medium"
    b[55:95, 55:95] = True
    return a, b


@pytest.fixture()
def handmade(tmp_path) -> Path:
    """One 100 x 100 image: a square of category 5 and one of category 9."""
    a, b = squares()
    return write_split(tmp_path, {1: ("x.png", 100, 100)}, [(1, 5, a), (1, 9, b)],
                       [(5, "apple"), (9, "pear")])


def score_file(results: list[dict], data: Path, tmp_path, monkeypatch, capsys) -> dict:
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(results))
    out = tmp_path / "ap.json"
    code, stdout, err = run_cli(["eval", "--results", path, "--data", data, "--project",
                                 tmp_path / "runs", "--json", out], monkeypatch, capsys)
    assert code == 0, err
    assert "n/a" in stdout  # no small and no large ground truth
    return json.loads(out.read_text())[0]


def test_results_file_perfect_predictions_give_100(handmade, tmp_path, monkeypatch, capsys):
    a, b = squares()
    dets = [{"image_id": 1, "category_id": 5, "segmentation": rle(a), "score": 0.9},
            {"image_id": 1, "category_id": 9, "segmentation": rle(b), "score": 0.8}]
    ap = score_file(dets, handmade, tmp_path, monkeypatch, capsys)
    assert ap == {"model": "dets", "AP": pytest.approx(100.0), "AP50": pytest.approx(100.0),
                  "AP75": pytest.approx(100.0), "APs": None, "APm": pytest.approx(100.0),
                  "APl": None}


def test_results_file_one_wrong_class(handmade, tmp_path, monkeypatch, capsys):
    """Square a predicted as pear (9) with the higher score. apple: no detection, AP 0.
    pear: ranked [a (false positive), b (true positive)], so precision is 1/2 at every recall
    level up to 1 and AP is 0.5. The mean over the two categories: 25."""
    a, b = squares()
    dets = [{"image_id": 1, "category_id": 9, "segmentation": rle(a), "score": 0.9},
            {"image_id": 1, "category_id": 9, "segmentation": rle(b), "score": 0.8}]
    ap = score_file(dets, handmade, tmp_path, monkeypatch, capsys)
    assert ap["AP"] == pytest.approx(25.0) and ap["AP50"] == pytest.approx(25.0)
    assert ap["APm"] == pytest.approx(25.0) and ap["APs"] is None


def test_results_file_without_detections(handmade, tmp_path, monkeypatch, capsys):
    ap = score_file([], handmade, tmp_path, monkeypatch, capsys)
    assert ap["AP"] == 0.0 and ap["APl"] is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["-c", "r50_giam"], "eval needs trained weights"),
        (["--results", "{dets}", "-c", "r50_giam"], "drop --weights/--config"),
        (["--results", "{bad}"], "entry 0 lacks segmentation"),
        (["--results", "{stray}"], "image id 42 is not in"),
        (["-w", "missing.pth"], "no such file"),
        (["--data", "nowhere.yaml", "-w", "x"], "neither a file nor a built-in dataset"),
    ],
)
def test_eval_user_errors(args, message, handmade, tmp_path, monkeypatch, capsys):
    files = {"dets": [], "bad": [{"image_id": 1, "category_id": 5, "score": 1.0}],
             "stray": [{"image_id": 42, "category_id": 5, "segmentation": {}, "score": 1.0}]}
    for key, value in files.items():
        (tmp_path / f"{key}.json").write_text(json.dumps(value))
    args = [str(tmp_path / f"{a[1:-1]}.json") if a.startswith("{") else a for a in args]
    if "--data" not in args:
        args += ["--data", str(handmade)]
    code, _, err = run_cli(["eval", *args, "--project", tmp_path / "runs"], monkeypatch, capsys)
    assert code == 2 and message in err.replace("\n", " ")
    assert not (tmp_path / "runs").exists()  # nothing written on a user error


def test_key_value_overrides_reach_the_model(synth, tmp_path, monkeypatch, capsys):
    """`eval ... test.mask_threshold=0.5` evaluates other masks than the config's 0.45; an
    unknown key is refused by name."""
    root, data = synth
    base = ["eval", "-w", root / "r50.pth", "-c", "r50_giam", "--data", data, "--size", SIZE,
            "--project", tmp_path]
    aps = []
    for extra in ([], ["test.mask_threshold=0.5"]):
        out = tmp_path / f"ap{len(aps)}.json"
        code, _, err = run_cli([*base, "--json", out, *extra], monkeypatch, capsys)
        assert code == 0, err
        aps.append(json.loads(out.read_text())[0]["AP"])
    assert aps[0] != aps[1]
    code, _, err = run_cli([*base, "test.mask_treshold=0.5"], monkeypatch, capsys)
    assert code == 2 and "mask_threshold" in err
