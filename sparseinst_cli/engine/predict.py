"""The predict loop: inputs -> pictures with overlays, COCO-style JSON, instance-label PNGs.

Three stages run at once (`stages.run_stages`): a thread reads and decodes images and video
frames, the caller's thread runs the model and post-processing, and a thread draws, encodes and
writes the results, in input order.
"""

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
from .stages import run_stages


@dataclass
class PredictOptions:
    out_dir: Path
    conf: float = 0.3  # final (rescored) score threshold for outputs
    batch: int = 1
    save_images: bool = True
    save_json: bool = False
    save_masks: bool = False
    pipelined: bool = True  # read, model and write at once; False: one after another


@dataclass
class PredictSummary:
    images: int = 0
    frames: int = 0
    instances: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(  # time spent in each step, summed over pictures
        default_factory=lambda: {"pre": 0.0, "model": 0.0, "post": 0.0}
    )
    wall_seconds: float = 0.0  # the whole run; less than the sum of steps when they overlap
    outputs: list[Path] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return self.images + self.frames

    @property
    def pictures_per_second(self) -> float:
        return self.processed / self.wall_seconds if self.wall_seconds > 0 else 0.0


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


@dataclass
class _Pictures:
    """Decoded pictures to run together: images (one SourceItem each) or consecutive frames
    of one video (its SourceItem repeated; `first_frame` is the index of the first)."""

    items: list[SourceItem]
    images: list[np.ndarray]
    first_frame: int | None = None  # None: still images
    results: list[Instances] = field(default_factory=list)


@dataclass
class _Skipped:
    path: str
    reason: str


@dataclass
class _VideoStart:
    item: SourceItem
    fps: float


@dataclass
class _VideoEnd:
    item: SourceItem


_Job = _Pictures | _Skipped | _VideoStart | _VideoEnd


def run_predict(
    predictor: Predictor,
    items: list[SourceItem],
    opts: PredictOptions,
    on_advance: Callable[[int], None] | None = None,
) -> PredictSummary:
    """Run every input; unreadable files are recorded in `summary.skipped`, never fatal.
    `on_advance(n)` is called as pictures (images, video frames, skipped files) are done."""
    run = _PredictRun(predictor, opts, on_advance)
    start = time.perf_counter()
    try:
        run_stages(_read(items, max(1, opts.batch)), run.infer, run.write,
                   concurrent=opts.pipelined)
    finally:
        run.close()  # an unfinished video's temporary file goes; finished outputs stay
        run.summary.wall_seconds = time.perf_counter() - start
    if opts.save_json:
        target = opts.out_dir / "predictions.json"
        atomic_write_json(target, run.json)
        run.summary.outputs.append(target)
    return run.summary


def _read(items: list[SourceItem], batch: int) -> Iterator[_Job]:
    """The read stage: images in batches, then each video as start, frame batches, end."""
    pending: list[tuple[SourceItem, np.ndarray]] = []
    for item in (it for it in items if it.kind == "image"):
        try:
            pending.append((item, read_image_rgb(item.path)))
        except UserError as exc:
            yield _Skipped(str(item.path), str(exc))
        if len(pending) == batch:
            yield _Pictures([i for i, _ in pending], [im for _, im in pending])
            pending = []
    if pending:
        yield _Pictures([i for i, _ in pending], [im for _, im in pending])
    for item in (it for it in items if it.kind == "video"):
        yield from _read_video(item, batch)


def _read_video(item: SourceItem, batch: int) -> Iterator[_Job]:
    cap = cv2.VideoCapture(str(item.path))
    if not cap.isOpened():
        yield _Skipped(str(item.path), f"cannot open video {item.path}")
        return
    try:
        yield _VideoStart(item, cap.get(cv2.CAP_PROP_FPS) or 25.0)
        index, frames = 0, []
        while True:
            ok, frame = cap.read()
            if ok:
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            if frames and (len(frames) == batch or not ok):
                yield _Pictures([item] * len(frames), frames, first_frame=index)
                index, frames = index + len(frames), []
            if not ok:
                break
        yield _VideoEnd(item)
    finally:
        cap.release()


class _PredictRun:
    """The model step (`infer`, on the caller's thread) and the write stage (`write`, on its
    own thread), with the run's totals; only the write stage touches files and totals."""

    def __init__(
        self, predictor: Predictor, opts: PredictOptions,
        on_advance: Callable[[int], None] | None,
    ):
        self.predictor, self.opts = predictor, opts
        self.on_advance = on_advance or (lambda n: None)
        self.summary = PredictSummary()
        self.json: list[dict] = []
        self.json_ids: list[str] = []  # file names; an entry's image_id is its index here
        self.video: _OpenVideo | None = None

    def infer(self, job: _Job) -> _Job:
        if not isinstance(job, _Pictures):
            return job
        p, secs = self.predictor, self.summary.seconds
        t0 = time.perf_counter()
        batch = p.prepare(job.images)
        t1 = time.perf_counter()
        outputs = p.forward(batch)
        t2 = time.perf_counter()
        job.results = p.postprocess(outputs, batch, min_score=self.opts.conf)
        secs["pre"] += t1 - t0
        secs["model"] += t2 - t1
        secs["post"] += time.perf_counter() - t2
        return job

    def write(self, job: _Job) -> None:
        if isinstance(job, _Skipped):
            self.summary.skipped.append((job.path, job.reason))
            self.on_advance(1)
        elif isinstance(job, _VideoStart):
            target = self.opts.out_dir / job.item.relative.with_suffix(".mp4")
            self.video = _OpenVideo(job.item, target, job.fps)
        elif isinstance(job, _VideoEnd):
            self._finish_video()
        else:
            for k, (item, image, inst) in enumerate(zip(job.items, job.images, job.results)):
                self.summary.instances += len(inst)
                if job.first_frame is None:
                    self._save_image(item, image, inst)
                else:
                    self._save_frame(item, job.first_frame + k, image, inst)
            self.on_advance(len(job.items))

    def close(self) -> None:
        if self.video is not None:
            self.video.discard()
            self.video = None

    def _save_image(self, item: SourceItem, image: np.ndarray, inst: Instances) -> None:
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
        self.summary.images += 1

    def _save_frame(self, item: SourceItem, index: int, frame: np.ndarray,
                    inst: Instances) -> None:
        assert self.video is not None
        self.video.write(draw_instances(frame, inst, self.predictor.class_names))
        if self.opts.save_json:
            self.json += coco_entries(inst, str(item.relative), index, self.predictor,
                                      frame=index)
        self.summary.frames += 1

    def _finish_video(self) -> None:
        video, self.video = self.video, None
        assert video is not None
        try:
            self.summary.outputs.append(video.finish())
        except RunError as exc:
            self.summary.skipped.append((str(video.item.path), str(exc)))
            self.on_advance(1)


class _OpenVideo:
    """An MP4 with overlays, written under a temporary name and renamed once complete."""

    def __init__(self, item: SourceItem, target: Path, fps: float):
        self.item, self.target, self.fps = item, target, fps
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".mp4", dir=target.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.writer: cv2.VideoWriter | None = None

    def write(self, rgb: np.ndarray) -> None:
        if self.writer is None:
            h, w = rgb.shape[:2]
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"),
                                          self.fps, (w, h))
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def finish(self) -> Path:
        if self.writer is None:
            self.discard()
            raise RunError(f"video {self.item.path} has no readable frames")
        self.writer.release()
        os.replace(self.tmp, self.target)
        return self.target

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.release()
        self.tmp.unlink(missing_ok=True)
