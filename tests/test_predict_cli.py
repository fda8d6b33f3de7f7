"""`sparseinst predict` end to end through the console entry point."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_support import run_cli_process as run_cli
from PIL import Image
from pycocotools import mask as mask_util

from sparseinst_cli.predictor import Predictor


def _scene(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    cv2.circle(image, (w // 3, h // 2), min(h, w) // 4, (230, 40, 40), -1)
    cv2.rectangle(image, (w // 2, h // 4), (w - 10, h - 10), (40, 220, 60), -1)
    return image


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    Image.fromarray(_scene(120, 160, 0)).save(folder / "good.jpg", quality=95)
    rgba = np.dstack([_scene(100, 140, 1), np.full((100, 140), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    gray16 = _scene(90, 130, 2)[..., 0].astype(np.uint16) * 257
    cv2.imwrite(str(folder / "gray16.png"), gray16)  # 16-bit single-channel PNG
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    Image.fromarray(_scene(80, 150, 3)).save(folder / "rotated.jpg", exif=exif, quality=95)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return folder


def test_folder_of_mixed_images(image_folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "viz"
    result = run_cli(
        "predict",
        image_folder,
        "--weights",
        tiny_checkpoint,
        "--out",
        out,
        "--save-json",
        "--save-masks",
        "--conf",
        "0",
    )
    assert result.returncode == 1, result.stderr
    assert "corrupt.jpg" in result.stderr and "Traceback" not in result.stderr
    written = sorted(p.name for p in out.iterdir() if p.is_file() and p.suffix != ".json")
    assert written == ["alpha.png", "good.jpg", "gray16.png", "rotated.jpg"]
    assert cv2.imread(str(out / "rotated.jpg")).shape[:2] == (150, 80)  # EXIF honoured
    entries = json.loads((out / "predictions.json").read_text())
    assert sorted({e["file_name"] for e in entries}) == written
    assert {e["category_name"] for e in entries} <= {"circle", "square", "triangle"}
    assert {e["category_id"] for e in entries} <= {1, 3, 7}
    label_map = cv2.imread(str(out / "masks" / "good.png"), cv2.IMREAD_UNCHANGED)
    assert label_map.dtype == np.uint16 and label_map.shape == (120, 160)


def test_json_masks_equal_python_api(image_folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "json"
    run_cli(
        "predict",
        image_folder / "good.jpg",
        image_folder / "alpha.png",
        "--weights",
        tiny_checkpoint,
        "--out",
        out,
        "--save-json",
        "--no-images",
        "--conf",
        "0",
    )
    entries = json.loads((out / "predictions.json").read_text())
    predictor = Predictor(tiny_checkpoint)
    for name in ("good.jpg", "alpha.png"):
        api = predictor.predict(image_folder / name).instances
        mine = [e for e in entries if e["file_name"] == name]
        assert len(mine) == len(api) > 0
        for entry, mask, score in zip(mine, api.masks, api.scores):
            decoded = mask_util.decode(entry["segmentation"]).astype(bool)
            assert np.array_equal(decoded, mask.numpy())
            assert abs(entry["score"] - float(score)) < 1e-5


def test_video_gives_same_frame_count(tiny_checkpoint, tmp_path):
    video = _clip(tmp_path / "clip.mp4", 7)
    out = tmp_path / "vid"
    result = run_cli("predict", video, "--weights", tiny_checkpoint, "--out", out, "--conf", "0")
    assert result.returncode == 0, result.stderr
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 7
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def _clip(path: Path, frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    for i in range(frames):
        writer.write(_scene(64, 96, i))
    writer.release()
    return path


def test_video_frames_in_batches_keep_their_order(tiny_checkpoint, tmp_path, image_folder):
    """Images and frames go through the read / model / write stages at once, 3 at a time:
    every frame is written once, in order, and the JSON numbers them 0..6."""
    video = _clip(tmp_path / "clip.mp4", 7)
    out = tmp_path / "vid"
    result = run_cli("predict", image_folder / "good.jpg", video, "--weights", tiny_checkpoint,
                     "--out", out, "--conf", "0", "--batch", "3", "--save-json")
    assert result.returncode == 0, result.stderr
    assert int(cv2.VideoCapture(str(out / "clip.mp4")).get(cv2.CAP_PROP_FRAME_COUNT)) == 7
    entries = json.loads((out / "predictions.json").read_text())
    frames = [e["frame"] for e in entries if e["file_name"] == "clip.mp4"]
    assert frames == sorted(frames) and set(frames) == set(range(7))
    one = Predictor(tiny_checkpoint)
    cap = cv2.VideoCapture(str(video))
    for index in range(7):  # each frame's masks are those of the frame alone
        frame = cv2.cvtColor(cap.read()[1], cv2.COLOR_BGR2RGB)
        api = one.predict(frame).instances
        mine = [e for e in entries if e.get("frame") == index]
        assert len(mine) == len(api)
        for entry, mask in zip(mine, api.masks):
            agree = mask_util.decode(entry["segmentation"]).astype(bool) == mask.numpy()
            assert agree.mean() > 0.999  # a batch rounds differently in the last bits


def test_a_crash_mid_video_leaves_finished_outputs_and_no_partial_file(
    tiny_checkpoint, tmp_path, image_folder, monkeypatch
):
    from sparseinst_cli.engine import predict as engine
    from sparseinst_cli.media.sources import expand_sources

    video = _clip(tmp_path / "clip.mp4", 6)
    drawn = []

    def draw(image, *args, **kwargs):
        if len(drawn) == 3:  # the image and two frames are done
            raise MemoryError("out of memory while drawing")
        drawn.append(image.shape)
        return image

    monkeypatch.setattr(engine, "draw_instances", draw)
    out = tmp_path / "out"
    items = expand_sources([str(image_folder / "good.jpg"), str(video)])
    with pytest.raises(MemoryError):
        engine.run_predict(Predictor(tiny_checkpoint), items,
                           engine.PredictOptions(out_dir=out, conf=0.0, batch=2))
    assert sorted(p.name for p in out.iterdir()) == ["good.jpg"]  # no clip.mp4, no temp file


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["nope/"], "source not found"),
        (["{empty}"], "holds no images"),
        (["{img}", "--weights", "missing.pth"], "checkpoint not found"),
        (["{img}", "--device", "cuda"], "no CUDA GPU"),
        (["{img}", "--dtype", "fp64"], "unknown dtype"),
    ],
)
def test_bad_inputs_get_one_line(args, fragment, tmp_path, image_folder, tiny_checkpoint):
    (tmp_path / "empty").mkdir()
    subst = {"{empty}": str(tmp_path / "empty"), "{img}": str(image_folder / "good.jpg")}
    args = [subst.get(a, a) for a in args]
    if "--weights" not in args:
        args += ["--weights", str(tiny_checkpoint)]
    result = run_cli("predict", *args, "--out", tmp_path / "o")
    assert result.returncode == 2
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_sigterm_mid_video_keeps_finished_outputs_and_no_partial_file(
    tiny_checkpoint, tmp_path, image_folder
):
    """A job scheduler's SIGTERM stops `predict` as Ctrl-C does: exit 130, the finished image
    kept, the unfinished video's temporary file removed."""
    import signal
    import subprocess
    import time

    from cli_support import CLI

    video = _clip(tmp_path / "long.mp4", 3000)
    out = tmp_path / "out"
    proc = subprocess.Popen([*CLI, "predict", str(image_folder / "good.jpg"), str(video),
                             "--weights", str(tiny_checkpoint), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(out.glob(".long.*")) and time.monotonic() < deadline:
        time.sleep(0.05)  # until the video has started
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["good.jpg"]
