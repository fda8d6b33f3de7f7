"""From what the user asked (TrainOptions) to what every process does (TrainPlan).

All user mistakes surface here, in the launching process, before any training process starts:
the config, the data and its classes, the batch split, precision, devices and the run folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import (
    Config,
    config_from_dict,
    config_with_overrides,
    load_config,
    override_keys,
    save_config,
)
from ..data.coco import CocoInstances
from ..data.datasets import SplitSpec, resolve_split
from ..data.stats import split_stats
from ..engine import run_dir as files
from ..engine.distributed import under_torchrun
from ..errors import UserError
from ..loading.checkpoint import is_ours, read_checkpoint
from ..loading.pretrained import resolve_backbone_weights
from ..modeling.build import check_model_config
from ..runtime import (
    AMP_MODES,
    available_cpus,
    check_process_count,
    cpu_has_native_bf16,
    resolve_device,
)
from .adapt import adapt_to_data
from .schedule import schedule_of
from .state import read_train_state
from .step import build_criterion

# Training evaluates one image at a time, as `sparseinst eval` and detectron2 do: images of
# different sizes padded into one batch change SparseInst's outputs (its activation maps are
# normalised over the padded input), which moved the AP of one rods model from 10.3 to 12.1,
# and best.pth should be chosen by the AP its users will measure.
EVAL_BATCH = 1


@dataclass
class TrainOptions:
    """Everything `sparseinst train` accepts; None means "from the config"."""

    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    data: str | None = None
    weights: str | None = None
    backbone_weights: str | None = None
    gpus: int = 1  # processes
    batch: int | None = None  # images per iteration over all processes
    iters: int | None = None
    time_minutes: float | None = None
    name: str | None = None  # default "exp"
    project: str = "runs/train"
    exist_ok: bool = False
    resume: bool = False
    amp: str | None = None
    device: str | None = None  # None: CUDA when present, else CPU
    workers: int | None = None
    stop_after: int | None = None  # stop as if interrupted after this many iterations (tests)


@dataclass
class TrainPlan:
    """What every training process needs; picklable, so spawned processes receive it."""

    config: dict[str, Any]
    run_dir: str
    train_split: SplitSpec
    val_split: SplitSpec | None
    val_images: int | None
    class_names: list[str]
    category_ids: list[int]
    world_size: int
    device_type: str  # cpu | cuda
    device: str  # the device of a single process (cpu, cuda, cuda:1)
    workers: int
    eval_batch: int
    resume: bool = False
    weights: str | None = None
    backbone_weights: str | None = None
    time_seconds: float | None = None
    stop_after: int | None = None


def pick_device(name: str | None, gpus: int) -> tuple[str, str]:
    """(device type, single-process device) for --device and --gpus."""
    name = name or ("cuda" if torch.cuda.is_available() else "cpu")
    device = resolve_device(name)
    if not under_torchrun():  # under torchrun --gpus counts every node's processes
        check_process_count(gpus, device.type)
    return device.type, name


def check_amp(amp: str, device_type: str) -> str:
    """The precision to train in; `auto` picks bf16 where the hardware computes it natively
    (CPUs with AVX512-BF16 or AMX, GPUs from Ampere on), else fp16 on GPUs, else none."""
    if amp not in AMP_MODES:
        raise UserError(f"--amp {amp!r} is not one of {', '.join(AMP_MODES)}")
    if amp == "fp16" and device_type != "cuda":
        raise UserError("--amp fp16 needs a CUDA GPU; on a CPU use --amp bf16 or none")
    if amp != "auto":
        return amp
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "none"


def read_classes(train: SplitSpec, val: SplitSpec | None, filter_empty: bool,
                 notice=None) -> tuple:
    """(class names, category ids, train images, val images) of the dataset; checks val.
    Both splits are validated here (data/validate.py); `notice` gets what was repaired."""
    source = CocoInstances(annotations=train.annotations, images=train.images,
                           filter_empty=filter_empty, names=train.names)
    if len(source) == 0:
        raise UserError(
            f"{train.annotations} has no image with an instance to train on; "
            "check the annotations (or set data.filter_empty=false)"
        )
    val_images = None
    if val is not None:
        val_source = CocoInstances(annotations=val.annotations, images=val.images,
                                   filter_empty=False, names=val.names)
        if val_source.category_ids != source.category_ids:
            raise UserError(
                f"{val.annotations} has category ids {val_source.category_ids[:8]} but the train "
                f"split has {source.category_ids[:8]}; both splits need the same categories"
            )
        val_images = len(val_source)
    for message in (source.notice, val_source.notice if val is not None else None):
        if message and notice is not None:
            notice(message)
    return source.class_names, source.category_ids, len(source), val_images


def resolve_splits(data: str, notice) -> tuple[SplitSpec, SplitSpec | None]:
    train = resolve_split(data, "train")
    try:
        val = resolve_split(data, "val")
    except UserError as exc:
        notice(f"no validation split, so no evaluation and best.pth is the final model ({exc})")
        val = None
    return train, val


def base_config(options: TrainOptions) -> Config:
    """--config (with overrides), else the config inside an own --weights checkpoint."""
    if options.config is not None:
        return load_config(options.config, options.overrides)
    if options.weights is not None:
        ckpt = read_checkpoint(options.weights)
        if is_ours(ckpt):
            return config_with_overrides(ckpt["config"], options.overrides)
    raise UserError("train needs --config (a zoo name such as demo, or a YAML file)")


def apply_options(cfg: Config, options: TrainOptions, world: int, notice) -> None:
    """Batch, iterations and precision from the command line into the config."""
    solver = cfg.solver
    if options.batch is not None and options.batch != solver.batch_size:
        suggested = solver.lr * options.batch / solver.batch_size
        notice(
            f"batch {options.batch} instead of the config's {solver.batch_size}: the linear "
            f"scaling rule suggests solver.lr={suggested:.3g} (config: {solver.lr:.3g})"
        )
        solver.batch_size = options.batch
    if solver.batch_size < world or solver.batch_size % world:
        raise UserError(
            f"--batch {solver.batch_size} cannot be split evenly over {world} processes; "
            f"use a multiple of {world}"
        )
    if options.iters is not None and options.time_minutes is not None:
        raise UserError("give either --iters or --time, not both")
    for value, flag in ((options.iters, "--iters"), (options.time_minutes, "--time")):
        if value is not None and value <= 0:
            raise UserError(f"{flag} must be positive, got {value}")
    if options.iters is not None:
        schedule = schedule_of(cfg).fit_to(options.iters)
        solver.max_iter, solver.steps = schedule.max_iter, list(schedule.steps)
        solver.warmup_iters = schedule.warmup_iters
    if options.amp is not None:
        solver.amp = options.amp


MIN_TRAIN_WINDOW = 32  # one cell at the backbone's last stride


def fit_to_data(
    cfg: Config, train: SplitSpec, val: SplitSpec | None, overrides: list[str], notice
) -> tuple:
    """The dataset's classes and statistics shape `cfg` (in place), which is then checked:
    a model or loss that cannot be built is refused before anything is written. Returns
    `read_classes`'s (class names, category ids, train images, val images)."""
    classes = read_classes(train, val, cfg.data.filter_empty, notice)
    ids = classes[1]
    if cfg.model.num_classes != len(ids):
        notice(f"the dataset has {len(ids)} classes: model.num_classes {cfg.model.num_classes} "
               f"-> {len(ids)}")
        cfg.model.num_classes = len(ids)
    for message in adapt_to_data(cfg, split_stats(train.annotations), override_keys(overrides)):
        notice(message)
    window = cfg.input.train_window
    if window and window < MIN_TRAIN_WINDOW:
        raise UserError(f"input.train_window must be 0 (whole images) or at least "
                        f"{MIN_TRAIN_WINDOW} px (the backbone's total stride), got {window}")
    check_model_config(cfg.model)
    build_criterion(cfg)
    return classes


def prepare_new(options: TrainOptions, notice) -> TrainPlan:
    """Plan a fresh run: config, data, classes, run folder (created, with config.yaml)."""
    cfg = base_config(options)
    data = options.data or cfg.data.train
    if not data:
        raise UserError("train needs --data (a DATA.yaml, coco_2017 or demo)")
    kind, device = pick_device(options.device, options.gpus)
    apply_options(cfg, options, options.gpus, notice)
    amp = check_amp(cfg.solver.amp, kind)
    if amp != cfg.solver.amp:
        notice(f"amp {cfg.solver.amp}: training in {amp} on this {kind}")
        cfg.solver.amp = amp
    if options.weights is not None and not Path(options.weights).is_file():
        raise UserError(f"--weights {options.weights}: file not found")
    backbone = options.backbone_weights or cfg.model.backbone.weights
    if backbone is not None:  # a file, or a tag fetched (or found in the cache) now, once
        backbone = str(resolve_backbone_weights(backbone, cfg.model.backbone.pretrained))
    train, val = resolve_splits(data, notice)
    names, ids, _, n_val = fit_to_data(cfg, train, val, options.overrides, notice)
    cfg.data.train = data
    run = files.new_run_dir(Path(options.project), options.name or "exp",
                            exist_ok=options.exist_ok)
    for stale in (files.METRICS, files.BEST, files.LAST, files.PLOT):
        (run / stale).unlink(missing_ok=True)
    files.remove_partial_writes(run)
    save_config(cfg, run / files.CONFIG_FILE)
    return TrainPlan(
        config=cfg.to_dict(), run_dir=str(run), train_split=train, val_split=val,
        val_images=n_val, class_names=names, category_ids=ids, world_size=options.gpus,
        device_type=kind, device=device,
        workers=loader_workers(options.workers, cfg.data.num_workers, kind, options.gpus),
        eval_batch=EVAL_BATCH,
        weights=options.weights, backbone_weights=backbone,
        time_seconds=options.time_minutes * 60 if options.time_minutes else None,
        stop_after=options.stop_after,
    )


def prepare_resume(options: TrainOptions, notice) -> TrainPlan:
    """Plan the continuation of a run from its last.pth; its config and data are kept."""
    run = files.resume_dir(Path(options.project), options.name)
    ckpt = read_train_state(run / files.LAST)
    files.remove_partial_writes(run)
    cfg = config_from_dict(ckpt["config"])
    ignored = [flag for flag, value in (
        ("--config", options.config), ("--data", options.data), ("--weights", options.weights),
        ("--batch", options.batch), ("--iters", options.iters), ("--time", options.time_minutes),
        ("--amp", options.amp), ("KEY=VALUE", options.overrides or None),
    ) if value is not None]
    if ignored:
        notice(f"resuming {run}: {', '.join(ignored)} ignored (the run keeps its own settings)")
    kind, device = pick_device(options.device, options.gpus)
    check_amp(cfg.solver.amp, kind)
    if cfg.solver.batch_size % options.gpus:
        raise UserError(f"the run's batch {cfg.solver.batch_size} cannot be split over "
                        f"{options.gpus} processes; pick another --gpus")
    train, val = resolve_splits(cfg.data.train, notice)
    _, _, _, n_val = read_classes(train, val, cfg.data.filter_empty, notice)
    return TrainPlan(
        config=cfg.to_dict(), run_dir=str(run), train_split=train, val_split=val,
        val_images=n_val, class_names=list(ckpt["class_names"]),
        category_ids=list(ckpt["category_ids"]), world_size=options.gpus, device_type=kind,
        device=device,
        workers=loader_workers(options.workers, cfg.data.num_workers, kind, options.gpus),
        eval_batch=EVAL_BATCH, resume=True,
        stop_after=options.stop_after,
    )


# Loader processes per GPU process when neither --workers nor the config asks for more: a GPU
# steps faster than 2 workers decode and augment (H200, R-50 G-IAM batch 16 at 416-640: 0.26 s
# per iteration with 2 workers, 0.22 s of it waiting for data; 0.11 s with 8), as Ultralytics
# uses up to 8 per GPU.
GPU_LOADER_WORKERS = 8


def loader_workers(requested: int | None, configured: int, device_type: str,
                   processes: int = 1) -> int:
    """Data loader processes per training process: `requested` (--workers) when given, else
    the config's `data.num_workers` (sized for CPU training, where workers take cores from
    the step), raised on CUDA to up to GPU_LOADER_WORKERS; never more than the cores."""
    cores = available_cpus()
    if requested is not None:
        if requested < 0:
            raise UserError(f"--workers must be 0 or more, got {requested}")
        return min(requested, cores)
    if device_type == "cuda":
        return max(configured, min(GPU_LOADER_WORKERS, cores // max(1, processes)))
    return min(configured, cores)


def prepare_plan(options: TrainOptions, notice) -> TrainPlan:
    if options.gpus < 1:
        raise UserError(f"--gpus must be at least 1, got {options.gpus}")
    return prepare_resume(options, notice) if options.resume else prepare_new(options, notice)
