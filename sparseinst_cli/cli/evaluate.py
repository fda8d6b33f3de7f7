"""`sparseinst eval`: COCO mask AP of one or several models (or of a results file) on a split."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ..data.coco import load_coco_checked, load_coco_json
from ..data.datasets import SplitSpec, resolve_split
from ..engine.eval_jobs import EvalJob, EvalOutcome, run_eval, run_eval_parallel
from ..engine.run_dir import new_run_dir
from ..errors import UserError
from ..evaluation import evaluate_segm
from ..fileio import atomic_write_json
from ..runtime import check_process_count, resolve_device, resolve_dtype
from .console import PlainLines, console, info, state
from .options import (
    BatchOpt,
    ConfigsOpt,
    DataOpt,
    DeviceOpt,
    DtypeOpt,
    GpusOpt,
    JsonOutOpt,
    MaxSizeOpt,
    OverridesArg,
    SizeOpt,
    WeightsListOpt,
)
from .tables import ap_table, per_class_table, print_table
from .targets import model_specs

SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # what --json writes per model
RESULT_KEYS = ("image_id", "category_id", "segmentation", "score")


def evaluate(
    weights: WeightsListOpt = None,
    config: ConfigsOpt = None,
    data: DataOpt = None,
    size: SizeOpt = None,
    max_size: MaxSizeOpt = None,
    per_class: Annotated[
        bool, typer.Option("--per-class", help="Add an AP table per class.")
    ] = False,
    json_out: JsonOutOpt = None,
    results: Annotated[
        Path | None,
        typer.Option("--results", help="Score an existing COCO results JSON; no model is run."),
    ] = None,
    gpus: GpusOpt = 1,
    batch: BatchOpt = 1,
    workers: Annotated[int, typer.Option("--workers", help="Image loading processes, e.g. 2.")] = 0,
    project: Annotated[
        Path, typer.Option("--project", help="Folder of the run folders, e.g. runs/eval.")
    ] = Path("runs/eval"),
    name: Annotated[
        str, typer.Option("--name", help="Run folder name (exp, exp2, ... if taken).")
    ] = "exp",
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "fp32",
    overrides: OverridesArg = None,
) -> None:
    """COCO mask AP on a val split (coco_2017_val unless --data). Examples:
    sparseinst eval -w model.pth --data demo; sparseinst eval -w model.pth test.mask_threshold=0.5
    """
    split = resolve_split(data or "coco_2017_val", "val")
    if results is not None:
        if weights or config or overrides:
            raise UserError(
                "--results scores a results file without a model; drop --weights/--config "
                "and KEY=VALUE"
            )
        records = [_score_file(results, split)]
        run_dir = new_run_dir(project, name)
    else:
        jobs = _jobs(weights, config, split, size, max_size, device, dtype, batch, workers, gpus,
                     tuple(overrides or ()))
        _, notice = load_coco_checked(split.annotations)  # broken data stops before a model
        if notice:
            info(notice)
        run_dir = new_run_dir(project, name)
        records = [_run_job(label, job, gpus, run_dir, len(jobs)) for label, job in jobs]
    atomic_write_json(run_dir / "metrics.json", records)
    if json_out is not None:
        atomic_write_json(json_out, [{"model": r["model"], **{k: r[k] for k in SUMMARY_KEYS}}
                                     for r in records])
    _render(records, split, per_class)
    info(f"wrote {run_dir / 'metrics.json'}" + (f" and {json_out}" if json_out else ""))


def _jobs(
    weights: list[Path] | None, configs: list[str] | None, split: SplitSpec, size: int | None,
    max_size: int | None, device: str, dtype: str, batch: int | None, workers: int, gpus: int,
    overrides: tuple[str, ...] = (),
) -> list[tuple[str, EvalJob]]:
    """Check every option before a model is built; one job per model."""
    specs = model_specs(weights, configs, command="eval")
    if any(s.weights is None for s in specs):
        raise UserError("eval needs trained weights: add --weights model.pth (with its --config)")
    resolved = resolve_device(device)
    resolve_dtype(dtype, resolved)
    check_process_count(gpus, resolved.type)
    for ok, message in (
        (batch is None or batch >= 1, f"--batch {batch} must be at least 1"),
        (workers >= 0, f"--workers {workers} must be 0 or more"),
        (size is None or size >= 32, f"--size {size} is too small; give the short side, e.g. 608"),
        (max_size is None or max_size >= 32, f"--max-size {max_size} must be at least 32"),
    ):
        if not ok:
            raise UserError(message)
    return [
        (s.label, EvalJob(
            weights=s.weights, config=s.config, split=split, min_size=size, max_size=max_size,
            device=device, dtype=dtype, batch_size=batch or 1, num_workers=workers,
            overrides=overrides,
        ))
        for s in specs
    ]


def _run_job(label: str, job: EvalJob, gpus: int, run_dir: Path, count: int) -> dict[str, Any]:
    """Evaluate one model, write its COCO results, return its metrics record."""
    safe = re.sub(r"[^\w.-]+", "_", label).strip("_")
    path = run_dir / ("results.json" if count == 1 else f"results_{safe}.json")
    bar = ImagesBar(label, quiet=state.quiet)
    try:
        if gpus > 1:
            outcome = run_eval_parallel(job, gpus, results_path=path, progress=bar)
        else:
            outcome = run_eval(job, results_path=path, progress=bar)
    finally:
        bar.close()
    for note in outcome.notes:
        info(f"{label}: {note}")
    info(f"{label}: {outcome.images} images in {outcome.seconds:.1f} s "
         f"({outcome.images / max(outcome.seconds, 1e-9):.2f} img/s), "
         f"{outcome.detections} detections in {path}")
    return _record(label, job, outcome)


def _record(label: str, job: EvalJob, outcome: EvalOutcome) -> dict[str, Any]:
    return {
        "model": label, "weights": str(job.weights), "config": job.config,
        "data": job.split.name, "size": job.min_size, "max_size": job.max_size,
        "dtype": job.dtype, "overrides": list(job.overrides), "images": outcome.images,
        "seconds": outcome.seconds,
        "results": str(outcome.results_path), **outcome.metrics,
    }


def _score_file(path: Path, split: SplitSpec) -> dict[str, Any]:
    """Metrics record of an existing COCO results file against `split`."""
    try:
        dets = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read --results {path} ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"--results {path} is not valid JSON ({exc})") from None
    if not isinstance(dets, list):
        raise UserError(f"--results {path} must be a JSON list of COCO results")
    for i, d in enumerate(dets):
        missing = [k for k in RESULT_KEYS if not isinstance(d, dict) or k not in d]
        if missing:
            raise UserError(f"--results {path}: entry {i} lacks {', '.join(missing)}; each "
                            "result needs image_id, category_id, segmentation (RLE) and score")
    gt = load_coco_json(split.annotations)
    unknown = sorted({d["image_id"] for d in dets} - set(gt.imgs))
    if unknown:
        raise UserError(f"--results {path}: image id {unknown[0]} is not in {split.name}; "
                        "score results against the dataset they were made for")
    stray = sorted({d["category_id"] for d in dets} - set(gt.cats))
    if stray:
        info(f"[yellow]warning:[/] {sum(d['category_id'] in stray for d in dets)} results have "
             f"category ids not in {split.name} ({', '.join(map(str, stray[:5]))}); they count "
             "for nothing")
    metrics = evaluate_segm(gt, dets)
    return {"model": path.stem, "results": str(path), "data": split.name,
            "images": len(gt.imgs), **metrics}


def _render(records: list[dict[str, Any]], split: SplitSpec, per_class: bool) -> None:
    table = ap_table([(r["model"], r) for r in records], title=f"COCO mask AP, {split.name}")
    table.caption = "pycocotools segm, 0-100; n/a: no ground truth of that size"
    print_table(console, table, min_width=90)
    if per_class:
        print_table(console, per_class_table([(r["model"], r["per_class"]) for r in records]),
                    min_width=60)


class _RateColumn(ProgressColumn):
    """Images per second."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} img/s" if speed else "- img/s", style="progress.data.speed")


class ImagesBar:
    """A progress bar with images/s, started on first use: it can be pickled to rank 0 of
    `--gpus N` and draws there."""

    def __init__(self, label: str, *, quiet: bool = False):
        self.label, self.quiet = label, quiet
        self._progress: Progress | None = None
        self._task: int | None = None
        self._lines: PlainLines | None = None  # not on a terminal: plain lines instead

    def __getstate__(self) -> dict[str, Any]:
        return {"label": self.label, "quiet": self.quiet}

    def __setstate__(self, state_: dict[str, Any]) -> None:
        self.__init__(state_["label"], quiet=state_["quiet"])

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if not console.is_terminal:
            self._lines = self._lines or PlainLines(f"eval {self.label}")
            self._lines.update(done, total)
            return
        if self._progress is None:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                _RateColumn(), TimeRemainingColumn(), console=console, transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=total)
        self._progress.update(self._task, completed=done, total=total)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
