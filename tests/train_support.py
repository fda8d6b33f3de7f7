"""Shared by the training tests: a tiny COCO dataset, a tiny model config, quick runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from sparseinst_cli.training.callbacks import TrainCallbacks, no_callbacks
from sparseinst_cli.training.launch import TrainOptions, run_training

CATEGORY_IDS = (2, 5, 9)  # not contiguous on purpose
COLOURS = ((220, 60, 40), (40, 190, 60), (50, 80, 230))

# A ~0.4 M-parameter model on 64 px images: a training iteration takes milliseconds.
TINY = [
    "model.backbone.name=test_resnet",
    "model.backbone.norm=frozen_bn",
    "model.encoder.channels=32",
    "model.decoder.num_masks=8",
    "model.decoder.inst_dim=32",
    "model.decoder.mask_dim=32",
    "model.decoder.inst_convs=1",
    "model.decoder.mask_convs=1",
    "model.decoder.kernel_dim=16",
    "input.min_size_train=[64]",
    "input.max_size_train=128",
    "input.min_size_test=64",
    "input.max_size_test=128",
    "solver.batch_size=4",
    "solver.lr=1e-3",
    "solver.max_iter=6",
    "solver.steps=[4]",
    "solver.warmup_iters=2",
    "solver.checkpoint_period=2",
    "solver.eval_period=0",
    "solver.amp=none",
    "solver.clip_grad_norm=0.0",
    "data.num_workers=0",
]
# What models/small.yaml adds to the demo model (head and losses), on the tiny model.
SMALL_HEAD = ("model.decoder.mask_stride=4", "model.decoder.centre_prior=true",
              "model.decoder.peak_anchors=true", "loss.centre_weight=1.0",
              "loss.matcher_anchor=1.0", "loss.target_resize=area",
              # and the training window small objects get (adapt.py): 65-96 px a side (padded
              # to 96), so on the 64x85 training images it keeps the height and 65-85 px of the
              # width, part of both objects: per-process instance counts stay equal (DDP test)
              "input.train_window=96")


def make_dataset(root: Path, *, n_train: int = 8, n_val: int = 4, per_image: int = 2) -> Path:
    """Images 96x128 with exactly `per_image` non-overlapping rectangles each (polygons);
    returns the DATA.yaml. Equal instance counts keep per-process loss means equal (DDP test)."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, count in (("train", n_train), ("val", n_val)):
        folder = root / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(count):
            image = rng.integers(90, 150, size=(96, 128, 3)).astype(np.uint8)
            for k in range(per_image):
                x0, y0 = 8 + 60 * k + int(rng.integers(0, 10)), int(rng.integers(5, 40))
                w, h = int(rng.integers(25, 45)), int(rng.integers(25, 45))
                cls = int(rng.integers(len(CATEGORY_IDS)))
                image[y0:y0 + h, x0:x0 + w] = COLOURS[cls]
                poly = [x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h]
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "iscrowd": 0,
                             "category_id": CATEGORY_IDS[cls], "segmentation": [poly],
                             "area": float(w * h), "bbox": [x0, y0, w, h]})
            Image.fromarray(image).save(folder / f"{i:04d}.png")
            images.append({"id": i + 1, "file_name": f"{i:04d}.png", "height": 96, "width": 128})
        cats = [{"id": c, "name": f"class{c}"} for c in CATEGORY_IDS]
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
        splits[split] = {"images": f"images/{split}", "annotations": f"annotations/{split}.json"}
    (root / "data.yaml").write_text(yaml.safe_dump(splits))
    return root / "data.yaml"


class Recorder(TrainCallbacks):
    """Keeps every notice, table and metric a run reports."""

    def __init__(self) -> None:
        self.notices: list[str] = []
        self.skipped: list[tuple[str, list[tuple[str, str]]]] = []
        self.evals: list[dict] = []
        self.iterations: list[int] = []
        self.lrs: list[float] = []

    def on_notice(self, message: str) -> None:
        self.notices.append(message)

    def on_skipped_weights(self, source: str, rows: list[tuple[str, str]]) -> None:
        self.skipped.append((source, rows))

    def on_iteration(self, iteration, max_iter, losses, lr) -> None:
        self.iterations.append(iteration)
        self.lrs.append(lr)

    def on_eval(self, iteration, metrics, best) -> None:
        self.evals.append(metrics)


def train(data: Path, project: Path, *, config: str = "demo", base: tuple[str, ...] = tuple(TINY),
          overrides: tuple[str, ...] = (), recorder=None, **options):
    """A run of `config` with `base` + `overrides` (the tiny model by default); its summary."""
    opts = TrainOptions(config=config, overrides=[*base, *overrides], data=str(data),
                        project=str(project), device="cpu", **options)
    if opts.gpus > 1:  # spawned processes need a picklable callbacks factory
        return run_training(opts, no_callbacks)
    recorder = recorder or Recorder()
    return run_training(opts, lambda: recorder)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict, *, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-5,
                                   msg=lambda text, key=key: f"{key}: {text}")


def large_result(rank: int, size: int) -> bytes:
    """A worker for `spawn` whose result is far larger than a pipe's buffer."""
    return bytes([rank]) * size
