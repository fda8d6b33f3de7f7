"""`sparseinst data check`: the defects of a COCO dataset in a table, and a cleaned copy."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from ..data.check import (
    FIX_ACTIONS,
    WARNINGS,
    DatasetReport,
    check_coco,
    histogram_bins,
    load_raw_coco,
)
from ..data.datasets import SplitSpec, resolve_split
from ..data.fix import write_fixed
from ..errors import UserError
from .console import console, err_console, info, state
from .options import DataOpt
from .tables import print_table

EXAMPLES_PER_KIND = 3
SPLITS = ("train", "val", "all")

app = typer.Typer(
    help="Dataset tools. Example: sparseinst data check --data data.yaml --split all",
    no_args_is_help=True,
)


@app.command("check")
def check(
    data: DataOpt = None,
    split: Annotated[
        str, typer.Option("--split", help="train, val or all (both), e.g. --split all.")
    ] = "train",
    fix: Annotated[
        bool,
        typer.Option("--fix", help="Write a cleaned copy of the JSON beside it, "
                                   "e.g. train.json -> train.fixed.json; the original is kept."),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Where --fix writes (implies --fix; one JSON only), "
                                         "e.g. -o clean.json."),
    ] = None,
    num_queries: Annotated[
        int,
        typer.Option("--num-queries", min=1,
                     help="The model's queries (masks) per image; images with more instances "
                          "are flagged, e.g. 50."),
    ] = 100,
) -> None:
    """Find the defects of a COCO dataset; --fix writes a cleaned copy of its JSON.

    Checks: missing/unreadable images, sizes (EXIF rotation too), polygons, zero areas,
    out-of-image annotations, unknown categories/images, duplicate ids, crowd-only images,
    and instances per image against the model's queries.

    Exit status: 0 when clean (warnings do not count), 1 when defects were found
    (with or without --fix; the fixed copy checks clean), 2 on a usage error.
    Example: sparseinst data check --data data.yaml --split all --fix
    """
    specs = _specs(data, split)
    if out is not None and len({s.annotations for s in specs}) > 1:
        raise UserError("--out names one file but --split all checks two; drop --out or pick "
                        "--split train or val")
    defects = 0
    for spec in specs:
        raw = load_raw_coco(spec.annotations)
        report = _run_check(raw, spec, num_queries)
        _render(report, spec.name)
        defects += report.defects
        if fix or out is not None:
            written = write_fixed(raw, report.plan, original=spec.annotations, out=out)
            info(f"wrote the cleaned copy {written}")
    if defects:
        raise typer.Exit(1)


def _specs(data: str | None, split: str) -> list[SplitSpec]:
    """The splits to check, one per distinct annotations file."""
    if data is None:
        raise UserError("give the dataset to check: --data data.yaml (or demo, crowded, coco_2017)")
    if split not in SPLITS:
        raise UserError(f"--split {split!r} is not one of {', '.join(SPLITS)}")
    names = ("train", "val") if split == "all" else (split,)
    specs: dict[Path, SplitSpec] = {}
    for name in names:
        spec = resolve_split(data, name)
        specs.setdefault(spec.annotations.resolve(), spec)
    return list(specs.values())


def _run_check(raw: dict, spec: SplitSpec, num_queries: int) -> DatasetReport:
    """check_coco with a progress bar over the image reads (none under --quiet)."""
    if state.quiet:
        return check_coco(raw, annotations=spec.annotations, images=spec.images,
                          num_queries=num_queries)
    columns = (TextColumn(f"checking {spec.name}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("images", total=len(raw["images"]))
        return check_coco(
            raw, annotations=spec.annotations, images=spec.images, num_queries=num_queries,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )


def _render(report: DatasetReport, name: str) -> None:
    """Findings table, histogram and a one-line verdict on stdout."""
    title = (f"{name}: {report.annotations} ({report.num_images} images, "
             f"{report.num_annotations} annotations)")
    counts = report.counts()
    if counts:
        print_table(console, _findings_table(report, counts, title))
    else:
        console.print(title, highlight=False)
    print_table(console, _histogram_table(report))
    warnings = len(report.findings) - report.defects
    verdict = ("[bold green]clean[/]" if not report.defects
               else f"[bold red]{report.defects} defect(s)[/]")
    console.print(f"{name}: {verdict}, {warnings} warning(s)", highlight=False)


def _findings_table(report: DatasetReport, counts: dict[str, int], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for header in ("kind", "count", "--fix", "examples"):
        table.add_column(header, justify="right" if header == "count" else "left")
    for kind, count in counts.items():
        examples = [f for f in report.findings if f.kind == kind][:EXAMPLES_PER_KIND]
        text = "\n".join(f"{f.where()}: {f.detail}" if f.where() else f.detail
                         for f in examples)
        label = f"{kind} (warning)" if kind in WARNINGS else kind
        table.add_row(label, str(count), FIX_ACTIONS[kind], text)
    return table


def _histogram_table(report: DatasetReport) -> Table:
    bins = histogram_bins(report.histogram, report.num_queries)
    table = Table(title=f"instances per image ({report.num_queries} queries)",
                  title_justify="left")
    table.add_column("instances")
    table.add_column("images", justify="right")
    table.add_column("")
    most = max((n for _, n in bins), default=0) or 1
    for label, n in bins:
        table.add_row(label, str(n), "#" * round(30 * n / most))
    return table
