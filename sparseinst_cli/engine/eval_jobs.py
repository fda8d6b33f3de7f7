"""Evaluating one model on a split, in this process or in several (`sparseinst eval --gpus N`).

The inference loop and the COCO AP are `engine.evaluate.evaluate_split`; this module adds what
a command needs around it: category ids matched to the dataset, several processes merged, and
timing.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.datasets import SplitSpec
from ..errors import UserError
from ..fileio import atomic_write_bytes
from ..loading import LoadedModel, load_model
from ..runtime import available_cpus
from .distributed import free_port, init_group, shutdown, spawn
from .evaluate import evaluate_split

Progress = Callable[[int, int], None]  # (images done, images in total)


@dataclass(frozen=True)
class EvalJob:
    """One model on one split, with the inference settings."""

    weights: Path | None
    config: str | None
    split: SplitSpec
    min_size: int | None = None  # the config's test size when None
    max_size: int | None = None
    device: str = "cpu"
    dtype: str = "fp32"
    batch_size: int = 1
    num_workers: int = 0
    overrides: tuple[str, ...] = ()  # KEY=VALUE on the model's config, e.g. test.mask_threshold=0.5


@dataclass
class EvalOutcome:
    """Metrics (0-100, None for n/a, with `per_class`), how long it took, and where the COCO
    results (RLE masks) were written, if anywhere."""

    metrics: dict[str, Any]
    images: int
    seconds: float
    detections: int
    results_path: Path | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


def dataset_categories(split: SplitSpec) -> tuple[list[int], list[str]]:
    """Category ids (ascending) and names of a split, without indexing its annotations."""
    try:
        with open(split.annotations, encoding="utf-8") as f:
            cats = sorted(json.load(f).get("categories", []), key=lambda c: c["id"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"cannot read the categories of {split.annotations} ({exc})") from None
    names = list(split.names) if split.names else [str(c.get("name", c["id"])) for c in cats]
    return [int(c["id"]) for c in cats], names


def align_categories(loaded: LoadedModel, split: SplitSpec) -> tuple[LoadedModel, str | None]:
    """Give results the dataset's category ids.

    The checkpoint's ids are used when they are the dataset's. Otherwise, when the class names
    are the same (an official COCO checkpoint on a COCO-format copy with other ids), ids are
    matched by name; anything else is left for `evaluate_split` to reject.
    """
    data_ids, data_names = dataset_categories(split)
    if sorted(loaded.category_ids) == data_ids:
        return loaded, None
    by_name = dict(zip(data_names, data_ids))
    if len(by_name) == len(data_ids) == len(loaded.class_names) and set(by_name) == set(
        loaded.class_names
    ):
        ids = [by_name[n] for n in loaded.class_names]
        note = f"category ids of {split.name} differ from the checkpoint's; matched by class name"
        return dataclasses.replace(loaded, category_ids=ids), note
    return loaded, None


def run_eval(
    job: EvalJob, *, results_path: Path | None = None, loaded: LoadedModel | None = None,
    progress: Progress | None = None, rank: int = 0, world_size: int = 1,
) -> EvalOutcome | None:
    """Evaluate `job` in this process (or as one rank of several); rank 0 writes the COCO
    results to `results_path` (when given) and gets the outcome."""
    loaded = loaded or load_model(job.weights, job.config, list(job.overrides))
    loaded, note = align_categories(loaded, job.split)
    start = time.perf_counter()
    out = evaluate_split(
        loaded, job.split, min_size=job.min_size, max_size=job.max_size,
        batch_size=job.batch_size, num_workers=job.num_workers, device=job.device,
        dtype=job.dtype, progress=progress, rank=rank, world_size=world_size,
    )
    if rank != 0:
        return None
    seconds = time.perf_counter() - start
    results, images = out.pop("results"), int(out.pop("images"))
    if results_path is not None:
        atomic_write_bytes(results_path, json.dumps(results).encode())
    return EvalOutcome(
        out, images=images, seconds=seconds, detections=len(results),
        results_path=results_path, notes=[note] if note else [],
    )


def run_eval_parallel(
    job: EvalJob, processes: int, *, results_path: Path | None = None,
    progress: Progress | None = None,
) -> EvalOutcome:
    """Evaluate `job` in `processes` spawned processes, one GPU each on CUDA (else CPU threads
    shared out); results are gathered and scored once, by rank 0, which also writes them.
    `progress` must be picklable: rank 0 calls it with its count scaled by the process count.
    Only the small outcome travels back, so no large object crosses the process pipe."""
    device_type = torch.device(job.device).type
    if device_type == "cuda" and torch.cuda.device_count() < processes:
        raise UserError(
            f"--gpus {processes} asks for more GPUs than the {torch.cuda.device_count()} present"
        )
    init_method = f"tcp://127.0.0.1:{free_port()}"
    outcome = spawn(
        _worker, processes, (processes, init_method, device_type, job, results_path, progress)
    )
    if outcome is None:
        raise UserError("the evaluation processes returned nothing; run with --gpus 1 to see why")
    return outcome


def _worker(
    rank: int, world_size: int, init_method: str, device_type: str, job: EvalJob,
    results_path: Path | None, progress: Progress | None,
) -> EvalOutcome | None:
    """One process of `run_eval_parallel`."""
    ctx = init_group(
        rank=rank, world_size=world_size, local_rank=rank, device_type=device_type,
        init_method=init_method,
    )
    try:
        if device_type == "cpu":
            torch.set_num_threads(max(1, available_cpus() // world_size))
        scaled = None
        if progress is not None and rank == 0:
            def scaled(done: int, total: int) -> None:
                progress(done * world_size, total * world_size)
        return run_eval(
            dataclasses.replace(job, device=ctx.device), results_path=results_path,
            progress=scaled, rank=rank, world_size=world_size,
        )
    finally:
        shutdown()
