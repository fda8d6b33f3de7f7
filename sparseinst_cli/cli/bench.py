"""`sparseinst bench`: latency, FPS, parameters and GFLOPs per variant and input size."""
from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..data.datasets import SplitSpec, resolve_split
from ..engine.benchmark import (
    BenchResult,
    BenchSettings,
    benchmark,
    busy_warning,
    default_image_path,
    trust_warnings,
)
from ..engine.eval_jobs import EvalJob, run_eval
from ..errors import UserError
from ..fileio import read_image_rgb
from ..loading import LoadedModel, load_model
from ..runtime import available_cpus, resolve_device, resolve_dtype
from ..training.speed import TrainBenchSettings
from .bench_train import bench_training, report
from .console import console, info, state
from .options import (
    BatchOpt,
    ConfigsOpt,
    DataOpt,
    DeviceOpt,
    JsonOutOpt,
    MaxSizeOpt,
    OverridesArg,
    WeightsListOpt,
)
from .tables import bench_caption, bench_markdown, bench_table
from .targets import ModelSpec, model_specs, official_variants


def bench(
    config: ConfigsOpt = None,
    all_variants: Annotated[
        bool, typer.Option("--all", help="Every official zoo variant (random init, no weights).")
    ] = False,
    size: Annotated[
        list[int] | None,
        typer.Option("--size", help="Short side(s); repeat, e.g. --size 608 --size 640."),
    ] = None,
    max_size: MaxSizeOpt = None,
    weights: WeightsListOpt = None,
    device: DeviceOpt = "cpu",
    dtype: Annotated[
        list[str] | None,
        typer.Option("--dtype", help="fp32, bf16 or fp16 (CUDA); repeat, e.g. --dtype bf16."),
    ] = None,
    batch: BatchOpt = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed steps first, e.g. 5.")] = 5,
    iters: Annotated[int, typer.Option("--iters", help="Timed steps, e.g. 20.")] = 20,
    threads: Annotated[
        int | None, typer.Option("--threads", help="CPU threads (default: every available core).")
    ] = None,
    image: Annotated[
        Path | None, typer.Option("--image", help="Input image (default: a shipped COCO photo).")
    ] = None,
    json_out: JsonOutOpt = None,
    eval_data: Annotated[
        str | None,
        typer.Option("--eval", help="Add mask AP on this dataset's val split, e.g. --eval demo."),
    ] = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the table as markdown (for a README).")
    ] = False,
    train: Annotated[
        bool,
        typer.Option("--train", help="Time training iterations instead (data, forward + loss, "
                     "backward + step), on --data, e.g. --train -c small --data demo."),
    ] = False,
    data: DataOpt = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="With --train: data loader processes.")
    ] = None,
    overrides: OverridesArg = None,
) -> None:
    """Measure forward + post-processing speed, or with --train training speed.
    Examples: sparseinst bench --all --size 608; sparseinst bench --train -c small --data demo"""
    if train:
        _refuse_for_training(weights, all_variants, image, eval_data, max_size)
        if workers is not None and workers < 0:
            raise UserError(f"--workers {workers} must be 0 or more")
        checked = _settings(device, dtype or [], batch, warmup, iters, threads, None, size or [])
        _warn(warmup, iters, device)
        bench_training(
            config or ["demo"], list(overrides or []), data, size or [], dtype,
            TrainBenchSettings(device=device, batch=batch, warmup=warmup, iters=iters,
                               threads=checked.threads, workers=workers),
            json_out=json_out, markdown=markdown,
        )
        return
    for flag, value in (("--data", data), ("--workers", workers), ("KEY=VALUE", overrides)):
        if value:
            raise UserError(f"{flag} is for --train; --eval DATA adds mask AP to a speed run")
    specs = _specs(config, weights, all_variants)
    dtypes = dtype or ["fp32"]
    settings = _settings(device, dtypes, batch, warmup, iters, threads, max_size, size or [])
    _warn(warmup, iters, device)
    if eval_data is not None and any(s.weights is None for s in specs):
        info("[yellow]warning:[/] --eval without --weights measures randomly initialised models")
    split = resolve_split(eval_data, "val") if eval_data is not None else None
    picture = read_image_rgb(image or default_image_path())
    results, failures = _run(specs, size or [None], dtypes, settings, picture, split)
    report(results, failures, json_out=json_out, markdown=markdown, table=bench_table,
           caption=bench_caption, as_markdown=bench_markdown)


def _warn(warmup: int, iters: int, device: str) -> None:
    for note in [*trust_warnings(warmup, iters), busy_warning(device)]:
        if note:
            info(f"[yellow]warning:[/] {note}")


def _refuse_for_training(
    weights: list[Path] | None, all_variants: bool, image: Path | None, eval_data: str | None,
    max_size: int | None,
) -> None:
    for flag, given in (("--weights", weights), ("--all", all_variants), ("--image", image),
                        ("--eval", eval_data), ("--max-size", max_size)):
        if given:
            raise UserError(f"{flag} is for inference speed; --train times a config's training "
                            "iterations (give -c CONFIG, --data, --size, --batch, --dtype)")


def _specs(
    configs: list[str] | None, weights: list[Path] | None, all_variants: bool
) -> list[ModelSpec]:
    if all_variants:
        if configs or weights:
            raise UserError("--all measures every zoo variant; drop --config/--weights or --all")
        return [ModelSpec(None, name, name) for name in official_variants()]
    return model_specs(weights, configs, command="bench")


def _settings(
    device: str, dtypes: list[str], batch: int | None, warmup: int, iters: int,
    threads: int | None, max_size: int | None, sizes: list[int],
) -> BenchSettings:
    """Check every number and name before any model is built."""
    dev = resolve_device(device)
    for name in dtypes:
        resolve_dtype(name, dev)
    checks = [
        (batch is None or batch >= 1, f"--batch {batch} must be at least 1"),
        (warmup >= 0, f"--warmup {warmup} must be 0 or more"),
        (iters >= 1, f"--iters {iters} must be at least 1"),
        (threads is None or threads >= 1, f"--threads {threads} must be at least 1"),
        (max_size is None or max_size >= 32, f"--max-size {max_size} must be at least 32"),
        *((s >= 32, f"--size {s} is too small; give the short side in pixels, e.g. 608")
          for s in sizes),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    return BenchSettings(
        device=device, batch=batch or 1, warmup=warmup, iters=iters,
        threads=threads or available_cpus(), max_size=max_size,
    )


def _run(
    specs: list[ModelSpec], sizes: list[int | None], dtypes: list[str],
    settings: BenchSettings, picture: np.ndarray, split: SplitSpec | None,
) -> tuple[list[BenchResult], list[str]]:
    """Every (model, size, dtype), one model in memory at a time, with a progress bar.

    A measurement that fails in torch (an op without a kernel for that dtype, out of memory)
    is reported and skipped; the others still run. Returns results and failure messages.
    """
    results: list[BenchResult] = []
    failures: list[str] = []
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, disable=state.quiet, transient=True) as progress:
        for spec in specs:
            loaded = load_model(spec.weights, spec.config)
            for s in sizes:
                short = s or loaded.config.input.min_size_test
                for dt in dtypes:
                    label = f"{spec.label} {short} {dt}"
                    task = progress.add_task(label, total=None)
                    try:
                        result = benchmark(
                            loaded, picture, variant=spec.label, size=short,
                            settings=replace(settings, dtype=dt),
                            on_progress=lambda done, total, t=task: progress.update(
                                t, completed=done, total=total),
                        )
                        if split is not None:
                            progress.update(task, description=f"{label} eval")
                            result.ap = _mask_ap(loaded, split, short, settings, dt)
                        results.append(result)
                    except (RuntimeError, NotImplementedError) as exc:
                        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                        failures.append(f"{label}: {type(exc).__name__}: {first[:200]}")
                    progress.remove_task(task)
            del loaded
            gc.collect()
    return results, failures


def _mask_ap(
    loaded: LoadedModel, split: SplitSpec, size: int, settings: BenchSettings, dtype: str
) -> float | None:
    """Mask AP (0-100) of the loaded model on `split`, at this size and dtype."""
    job = EvalJob(
        weights=None, config=None, split=split, min_size=size, max_size=settings.max_size,
        device=settings.device, dtype=dtype,
    )
    return run_eval(job, loaded=loaded).metrics.get("AP")
