"""Training speed (`sparseinst bench --train`): seconds per iteration of a config on a dataset,
split into data, forward + loss and backward + optimizer step, with images/s and peak memory.

Each iteration is the real one: the run's loader (its workers and augmentation) and
`Stepper.step`, on a model built from the config with its random initialisation.
"""
from __future__ import annotations

import copy
import gc
import resource
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..config import Config
from ..data.coco import CocoInstances
from ..data.datasets import SplitSpec
from ..engine.benchmark import Stats
from ..engine.distributed import DistContext
from ..modeling import build_model
from ..runtime import available_cpus, keep_freed_memory, release_freed_memory, resolve_device
from .loop import build_train_data
from .plan import check_amp, loader_workers
from .step import PhaseClock, Stepper

AMP_OF_DTYPE = {"fp32": "none", "bf16": "bf16", "fp16": "fp16"}
DTYPE_OF_AMP = {amp: dtype for dtype, amp in AMP_OF_DTYPE.items()}


@dataclass(frozen=True)
class TrainBenchSettings:
    """How to measure; None means the config's value."""

    device: str = "cpu"
    dtype: str | None = None  # fp32 | bf16 | fp16; the config's solver.amp when None
    batch: int | None = None
    warmup: int = 3
    iters: int = 10
    threads: int | None = None  # torch threads; every available core when None
    workers: int | None = None  # data loader processes


@dataclass
class TrainBenchResult:
    """One (config, input sizes, precision) measurement; times are per iteration, in ms."""

    variant: str
    sizes: list[int]  # training short sides, one drawn per image
    max_size: int
    batch: int
    dtype: str
    device: str
    threads: int
    workers: int
    warmup: int
    iters: int
    step_ms: Stats
    data_ms: Stats  # waiting for the loader and moving the batch to the device
    forward_ms: Stats  # forward and loss (the matcher included)
    backward_ms: Stats  # backward and optimizer step
    peak_memory_mb: float  # this process's (the loader's workers not counted)

    @property
    def images_per_s(self) -> float:
        return self.batch * 1000.0 / self.step_ms.median

    @property
    def sizes_label(self) -> str:
        low, high = min(self.sizes), max(self.sizes)
        return str(low) if low == high else f"{low}-{high}"

    def to_dict(self) -> dict:
        return {**asdict(self), "images_per_s": self.images_per_s}


def training_config(cfg: Config, settings: TrainBenchSettings, device_type: str) -> Config:
    """A copy of `cfg` with the settings' precision and batch (checked for this device)."""
    cfg = copy.deepcopy(cfg)
    if settings.dtype is not None:
        cfg.solver.amp = AMP_OF_DTYPE[settings.dtype]
    cfg.solver.amp = check_amp(cfg.solver.amp, device_type)
    if settings.batch is not None:
        cfg.solver.batch_size = settings.batch
    return cfg


def measure_training(
    cfg: Config, split: SplitSpec, *, variant: str, settings: TrainBenchSettings,
    on_progress: Callable[[int, int], None] | None = None,
) -> TrainBenchResult:
    """Time `settings.iters` training iterations of `cfg` on `split` after `warmup` untimed."""
    device = resolve_device(settings.device)
    cfg = training_config(cfg, settings, device.type)
    threads = settings.threads or available_cpus()
    torch.set_num_threads(threads)
    if device.type == "cpu":
        keep_freed_memory()  # as training does
    ctx = DistContext(device=settings.device)
    torch.manual_seed(cfg.seed)
    stepper = Stepper(build_model(cfg.model).to(device), cfg, ctx)
    source = CocoInstances(annotations=split.annotations, images=split.images,
                           filter_empty=cfg.data.filter_empty, names=split.names)
    workers = loader_workers(settings.workers, cfg.data.num_workers, device.type)
    batches = iter(build_train_data(cfg, source, ctx, workers=workers, start_iter=0))
    _reset_peak_memory(device)
    total = settings.warmup + settings.iters
    clock = PhaseClock(device)
    for iteration in range(total):
        if iteration == settings.warmup:
            clock = PhaseClock(device)  # only the timed iterations from here
        clock.restart()
        images, targets = next(batches)
        clock.mark("wait")
        stepper.step(iteration, images, targets, stop=False, clock=clock)
        if on_progress is not None:
            on_progress(iteration + 1, total)
    peak = _peak_memory_mb(device)
    del batches, stepper  # the loader's workers stop
    gc.collect()
    times = clock.seconds
    data = [w + d for w, d in zip(times["wait"], times["data"], strict=True)]
    steps = [d + f + b for d, f, b in zip(data, times["forward"], times["backward"], strict=True)]
    return TrainBenchResult(
        variant=variant, sizes=list(cfg.input.min_size_train), max_size=cfg.input.max_size_train,
        batch=cfg.solver.batch_size, dtype=DTYPE_OF_AMP[cfg.solver.amp], device=str(device),
        threads=threads, workers=workers, warmup=settings.warmup, iters=settings.iters,
        step_ms=Stats.of(steps), data_ms=Stats.of(data), forward_ms=Stats.of(times["forward"]),
        backward_ms=Stats.of(times["backward"]), peak_memory_mb=peak,
    )


def _reset_peak_memory(device: torch.device) -> None:
    """Start the peak-memory count now: a model measured before must not count."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    gc.collect()
    release_freed_memory()
    try:  # Linux: "5" resets the process's resident-memory high-water mark (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        kb = next(int(line.split()[1]) for line in status.splitlines()
                  if line.startswith("VmHWM:"))
        return kb / 1024
    except (OSError, StopIteration, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB; bytes on macOS
        return peak / (2**20 if sys.platform == "darwin" else 1024)
