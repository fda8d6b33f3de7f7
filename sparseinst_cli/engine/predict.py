"""The predict loop: inputs -> pictures with overlays, COCO-style JSON, instance-label PNGs."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_util

from ..errors import RunError, UserError
from ..fileio import atomic_write_json, read_image_rgb, write_image
from ..media.sources import SourceItem
from ..media.visualize import draw_instances, instance_label_map
from ..postprocess import Instances
from ..predictor import Predictor


@dataclass
class PredictOptions:
    out_dir: Path
    conf: float = 0.3  # final (rescored) score threshold for outputs
    batch: int = 1
    save_images: bool = True
    save_json: bool = False
    save_masks: bool = False


@dataclass
class PredictSummary:
    images: int = 0
    frames: int = 0
    instances: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(
        default_factory=lambda: {"pre": 0.0, "model": 0.0, "post": 0.0}
    )
    outputs: list[Path] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return self.images + self.frames


def coco_entries(
    instances: Instances, file_name: str, image_id: int, predictor: Predictor, **extra
) -> list[dict]:
    """COCO-results-style dicts (category id and name, score, RLE) for one image."""
    ids, names = predictor.loaded.category_ids, predictor.class_names
    entries = []
    for mask, score, label in zip(instances.masks.numpy(), instances.scores, instances.labels):
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        entries.append(
            {
                "file_name": file_name,
                "image_id": image_id,
                **extra,
                "category_id": int(ids[int(label)]),
                "category_name": names[int(label)],
                "score": round(float(score), 6),
                "segmentation": rle,
            }
        )
    return entries


class _Runner:
    """Holds the predictor, options and running totals of one predict run."""

    def __init__(self, predictor: Predictor, opts: PredictOptions):
        self.predictor, self.opts = predictor, opts
        self.summary = PredictSummary()
        self.json: list[dict] = []
        self.json_ids: list[str] = []  # file names; an entry's image_id is its index here

    def infer(self, images: list[np.ndarray]) -> list[Instances]:
        p, secs = self.predictor, self.summary.seconds
        t0 = time.perf_counter()
        batch = p.prepare(images)
        t1 = time.perf_counter()
        outputs = p.forward(batch)
        t2 = time.perf_counter()
        results = p.postprocess(outputs, batch, min_score=self.opts.conf)
        secs["pre"] += t1 - t0
        secs["model"] += t2 - t1
        secs["post"] += time.perf_counter() - t2
        self.summary.instances += sum(len(r) for r in results)
        return results

    def save_image(self, item: SourceItem, image: np.ndarray, inst: Instances) -> None:
        o = self.opts
        if o.save_images:
            target = o.out_dir / item.relative
            write_image(target, draw_instances(image, inst, self.predictor.class_names))
            self.summary.outputs.append(target)
        if o.save_masks:
            target = o.out_dir / "masks" / item.relative.with_suffix(".png")
            write_image(target, instance_label_map(inst, image.shape[:2]))
        if o.save_json:
            self.json += coco_entries(inst, str(item.relative), len(self.json_ids), self.predictor)
            self.json_ids.append(str(item.relative))


def run_predict(
    predictor: Predictor,
    items: list[SourceItem],
    opts: PredictOptions,
    on_advance: Callable[[int], None] | None = None,
) -> PredictSummary:
    """Run every input; unreadable files are recorded in `summary.skipped`, never fatal."""
    runner = _Runner(predictor, opts)
    images = [it for it in items if it.kind == "image"]
    for chunk in _chunks(images, max(1, opts.batch)):
        loaded = []
        for item in chunk:
            try:
                loaded.append((item, read_image_rgb(item.path)))
            except UserError as exc:
                runner.summary.skipped.append((str(item.path), str(exc)))
                _advance(on_advance)
        if loaded:
            results = runner.infer([im for _, im in loaded])
            for (item, image), inst in zip(loaded, results):
                runner.save_image(item, image, inst)
                runner.summary.images += 1
                _advance(on_advance)
    for item in (it for it in items if it.kind == "video"):
        _run_video(runner, item)
        _advance(on_advance)
    if opts.save_json:
        target = opts.out_dir / "predictions.json"
        atomic_write_json(target, runner.json)
        runner.summary.outputs.append(target)
    return runner.summary


def _advance(callback: Callable[[int], None] | None) -> None:
    if callback is not None:
        callback(1)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _read_frames(cap: cv2.VideoCapture) -> Iterator[np.ndarray]:
    while True:
        ok, frame = cap.read()
        if not ok:
            return
        yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def _run_video(runner: _Runner, item: SourceItem) -> None:
    """Frame by frame to an MP4 with overlays (written under a temporary name, then renamed)."""
    cap = cv2.VideoCapture(str(item.path))
    if not cap.isOpened():
        runner.summary.skipped.append((str(item.path), f"cannot open video {item.path}"))
        return
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    target = runner.opts.out_dir / item.relative.with_suffix(".mp4")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".mp4", dir=target.parent)
    os.close(fd)
    writer = None
    try:
        for index, frame in enumerate(_read_frames(cap)):
            inst = runner.infer([frame])[0]
            if writer is None:
                h, w = frame.shape[:2]
                writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            writer.write(
                cv2.cvtColor(
                    draw_instances(frame, inst, runner.predictor.class_names), cv2.COLOR_RGB2BGR
                )
            )
            if runner.opts.save_json:
                runner.json += coco_entries(
                    inst, str(item.relative), index, runner.predictor, frame=index
                )
            runner.summary.frames += 1
        if writer is None:
            raise RunError(f"video {item.path} has no readable frames")
        writer.release()
        os.replace(tmp, target)
        runner.summary.outputs.append(target)
    except RunError as exc:
        runner.summary.skipped.append((str(item.path), str(exc)))
    finally:
        cap.release()
        Path(tmp).unlink(missing_ok=True)
