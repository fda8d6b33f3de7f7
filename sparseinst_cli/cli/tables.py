"""Rich (and markdown) tables for mask AP and speed, shared by eval, bench and train."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich import box
from rich.console import Console
from rich.table import Table

from ..engine.benchmark import BenchResult
from ..training.speed import TrainBenchResult

AP_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
AP_HEADERS = {"AR100": "AR"}  # AR = AR@100 detections, pycocotools' last recall summary


def fmt_metric(value: float | None, digits: int = 1) -> str:
    """A 0-100 metric for people: 'n/a' where pycocotools had nothing to measure."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def ap_table(rows: Sequence[tuple[str, Mapping]], *, title: str = "COCO mask AP") -> Table:
    """One row per evaluated model: (label, metrics dict with AP_COLUMNS keys, 0-100)."""
    table = Table(title=title)
    table.add_column("model")
    for key in AP_COLUMNS:
        table.add_column(AP_HEADERS.get(key, key), justify="right")
    for label, metrics in rows:
        table.add_row(label, *(fmt_metric(metrics.get(k)) for k in AP_COLUMNS))
    return table


def per_class_table(
    rows: Sequence[tuple[str, Mapping[str, float | None]]], *, title: str = "mask AP per class"
) -> Table:
    """A row per class and a column per model: (label, {class name: AP or None})."""
    table = Table(title=title)
    table.add_column("class")
    for label, _ in rows:
        table.add_column(label, justify="right")
    names = list(dict.fromkeys(n for _, per_class in rows for n in per_class))
    for name in names:
        table.add_row(name, *(fmt_metric(per_class.get(name)) for _, per_class in rows))
    return table


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _bench_cells(r: BenchResult, with_ap: bool) -> list[str]:
    cells = [
        r.variant, str(r.size), r.dtype, f"{r.params / 1e6:.1f}", f"{r.gflops:.1f}",
        _ms(r.model_ms.median), _ms(r.post_ms.median), _ms(r.total_ms.median),
        _ms(r.total_ms.p90), f"{r.fps:.2f}" if r.fps < 10 else f"{r.fps:.1f}", f"{r.detections:g}",
    ]
    if with_ap:
        cells.append(fmt_metric(r.ap))
    return cells


BENCH_HEADERS = (
    "variant", "size", "dtype", "params M", "GFLOPs",
    "model ms", "post ms", "total ms", "p90 ms", "FPS", "dets",
)


def bench_table(results: Sequence[BenchResult], *, title: str = "sparseinst bench") -> Table:
    """Speed per (variant, size, dtype): median model / post-processing / total latency per
    batch, p90 of the total, FPS in images/s, detections per image."""
    with_ap = any(r.ap is not None for r in results)
    headers = BENCH_HEADERS + (("AP",) if with_ap else ())
    return _numbers_table(headers, [_bench_cells(r, with_ap) for r in results], title)


def _numbers_table(headers: Sequence[str], rows: list[list[str]], title: str) -> Table:
    """A compact table: the first column a label, the others right-aligned numbers."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for i, header in enumerate(headers):
        widest = max((len(row[i]) for row in rows), default=1)
        if i == 0:
            table.add_column(header, no_wrap=True)
        else:
            table.add_column(header, justify="right", min_width=max(widest, 4))
    for row in rows:
        table.add_row(*row)
    return table


def _markdown(headers: Sequence[str], rows: list[list[str]], caption: str) -> str:
    """GitHub markdown: the table, then its caption (for a README)."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n\n" + caption + "\n"


def _machine(env: Mapping[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in env.items())


def bench_caption(results: Sequence[BenchResult], env: Mapping[str, str]) -> str:
    """How the numbers were taken: machine, versions, batch, threads, warm-up and iterations."""
    if not results:
        return ""
    r = results[0]
    return (
        f"{_machine(env)}; device {r.device}, batch {r.batch}, {r.threads} thread"
        f"{'s' if r.threads != 1 else ''}, "
        f"{r.warmup} warm-up + {r.iters} timed steps; ms are medians, p90 of the latency; "
        "latency = forward + post-processing (no reading/resizing); "
        "GFLOPs per image with a multiply-add counted as 2"
    )


def bench_markdown(results: Sequence[BenchResult], env: Mapping[str, str]) -> str:
    """The bench table as GitHub markdown, with the caption underneath (for a README)."""
    with_ap = any(r.ap is not None for r in results)
    headers = BENCH_HEADERS + (("AP",) if with_ap else ())
    rows = [_bench_cells(r, with_ap) for r in results]
    return _markdown(headers, rows, bench_caption(results, env))


TRAIN_BENCH_HEADERS = (
    "config", "sizes", "batch", "dtype", "s/it", "p90 s/it", "images/s", "data s",
    "fwd+loss s", "bwd+step s", "peak MB",
)


def _train_bench_cells(r: TrainBenchResult) -> list[str]:
    return [
        r.variant, r.sizes_label, str(r.batch), r.dtype, f"{r.step_ms.median / 1000:.2f}",
        f"{r.step_ms.p90 / 1000:.2f}", f"{r.images_per_s:.2f}", f"{r.data_ms.median / 1000:.3f}",
        f"{r.forward_ms.median / 1000:.2f}", f"{r.backward_ms.median / 1000:.2f}",
        f"{r.peak_memory_mb:.0f}",
    ]


def train_bench_table(
    results: Sequence[TrainBenchResult], *, title: str = "sparseinst bench --train"
) -> Table:
    """Training speed per (config, sizes, dtype): median seconds per iteration and per phase."""
    return _numbers_table(TRAIN_BENCH_HEADERS, [_train_bench_cells(r) for r in results], title)


def train_bench_caption(results: Sequence[TrainBenchResult], env: Mapping[str, str]) -> str:
    if not results:
        return ""
    r = results[0]
    return (
        f"{_machine(env)}; device {r.device}, {r.threads} thread{'s' if r.threads != 1 else ''}, "
        f"{r.workers} data worker{'s' if r.workers != 1 else ''}, {r.warmup} warm-up + {r.iters} "
        "timed iterations of the real training step (random initialisation); medians; a short "
        "side drawn per image from the sizes; data = waiting for the loader + copy to the "
        "device; peak MB = the training process's resident memory (its GPU memory on CUDA)"
    )


def train_bench_markdown(results: Sequence[TrainBenchResult], env: Mapping[str, str]) -> str:
    rows = [_train_bench_cells(r) for r in results]
    return _markdown(TRAIN_BENCH_HEADERS, rows, train_bench_caption(results, env))


def print_table(console: Console, table: Table, *, min_width: int = 120) -> None:
    """Print `table`; into a file or pipe (80 columns by default) at least `min_width` wide,
    so that logs keep whole rows."""
    if console.is_terminal:
        console.print(table)
        return
    # Console.print(width=) cannot exceed the console's width, so widen the console itself.
    width = console.width
    console.width = max(width, min_width)
    try:
        console.print(table)
    finally:
        console.width = width
