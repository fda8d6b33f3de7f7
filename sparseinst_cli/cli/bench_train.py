"""`sparseinst bench --train`: seconds per training iteration per config, size and precision."""
from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..config import load_config
from ..data.datasets import resolve_split
from ..engine.benchmark import environment
from ..errors import RunError, UserError
from ..fileio import atomic_write_json
from ..training.plan import fit_to_data
from ..training.speed import TrainBenchSettings, measure_training
from .console import console, info, state
from .tables import (
    print_table,
    train_bench_caption,
    train_bench_markdown,
    train_bench_table,
)


def bench_training(
    configs: list[str], overrides: list[str], data: str | None, sizes: list[int],
    dtypes: list[str] | None, settings: TrainBenchSettings, *, json_out: Path | None,
    markdown: bool,
) -> None:
    """Measure every (config, size, dtype); the config's training sizes (fitted to the data, as
    `train` fits them) when no size is given. `overrides` apply to every config."""
    jobs = []  # (label, config fitted to the data, train split), all checked before any timing
    for name in configs:
        for size in sizes or [None]:
            keys = overrides + ([] if size is None else [f"input.min_size_train=[{size}]"])
            cfg = load_config(name, keys)
            source = data or cfg.data.train
            if not source:
                raise UserError(f"{name} names no training data; give --data (e.g. --data demo)")
            train = resolve_split(source, "train")
            fit_to_data(cfg, train, None, keys, lambda message, n=name: info(f"{n}: {message}"))
            jobs.append((Path(name).stem, cfg, train))
    results, failures = [], []
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, disable=state.quiet, transient=True) as progress:
        for label, cfg, train in jobs:
            for dtype in dtypes or [None]:
                task = progress.add_task(f"{label} {dtype or cfg.solver.amp}", total=None)
                try:
                    results.append(measure_training(
                        cfg, train, variant=label, settings=replace(settings, dtype=dtype),
                        on_progress=lambda done, total, t=task: progress.update(
                            t, completed=done, total=total),
                    ))
                except (RuntimeError, NotImplementedError) as exc:
                    first = (str(exc).strip().splitlines() or [""])[0]
                    failures.append(f"{label} {dtype}: {type(exc).__name__}: {first[:200]}")
                progress.remove_task(task)
                gc.collect()
    report(results, failures, json_out=json_out, markdown=markdown, table=train_bench_table,
           caption=train_bench_caption, as_markdown=train_bench_markdown)


def report(
    results: list, failures: list[str], *, json_out: Path | None, markdown: bool,
    table: Callable, caption: Callable, as_markdown: Callable,
) -> None:
    """Print the speed table (or its markdown), write --json, list failures; shared by
    inference and training measurements, each with its own table functions."""
    if not results:
        raise RunError(f"every measurement failed; the first: {failures[0]}")
    env = environment()
    if markdown:
        console.print(as_markdown(results, env), markup=False, highlight=False, soft_wrap=True)
    else:
        rendered = table(results)
        rendered.caption = caption(results, env)
        print_table(console, rendered)
    if json_out is not None:
        atomic_write_json(json_out, {"environment": env, "results": [r.to_dict() for r in results]})
        info(f"wrote {json_out}")
    for failure in failures:
        info(f"[red]failed:[/] {failure}")
    if failures:
        raise RunError(f"{len(failures)} measurement(s) failed (listed above); the rest are shown")
