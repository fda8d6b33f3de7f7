"""`sparseinst train`: parse -> TrainOptions -> engine run_training -> Rich progress and tables."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..training.callbacks import RunInfo, TrainCallbacks, TrainSummary
from ..training.launch import TrainOptions, run_training
from .console import PlainLines, console, err_console, info, state
from .options import BatchOpt, ConfigOpt, DataOpt, GpusOpt, OverridesArg, WeightsOpt
from .tables import ap_table, per_class_table, print_table

SHORT = {"loss_cls": "cls", "loss_mask_bce": "bce", "loss_dice": "dice", "loss_objectness": "obj",
         "loss_iam": "iam", "loss_centre": "centre"}


def loss_text(losses: dict[str, float], lr: float) -> str:
    """`loss 1.23 (cls 0.21 bce 0.30 dice 0.40 obj 0.32) lr 1.0e-03`: one short line."""
    parts = " ".join(f"{SHORT[k]} {v:.2f}" for k, v in losses.items() if k in SHORT)
    total = losses.get("total_loss")
    head = f"loss {total:.2f} ({parts})" if total is not None else parts
    return f"{head} lr {lr:.1e}"


class RichTrainCallbacks(TrainCallbacks):
    """Progress bar (iteration, ETA, losses, lr), notices, skipped-weights and AP tables."""

    def __init__(self, quiet: bool = False, log_every: float | None = None):
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.eval_task: TaskID | None = None
        # Not on a terminal (a log file or pipe): a plain line every log_every seconds.
        self.lines = PlainLines("iter", every=log_every)

    def _print(self, renderable: Any) -> None:
        target = self.progress.console if self.progress is not None else err_console
        target.print(renderable, highlight=False)

    def on_notice(self, message: str) -> None:
        if not self.quiet:
            self._print(f"[yellow]note:[/] {message}")

    def on_skipped_weights(self, source: str, rows: list[tuple[str, str]]) -> None:
        if self.quiet:
            return
        table = Table(title=f"not loaded from {source}", title_justify="left")
        table.add_column("tensor")
        table.add_column("why")
        for key, why in rows:
            table.add_row(key, why)
        self._print(table)

    def on_start(self, info_: RunInfo) -> None:
        if self.quiet:
            return
        procs = f", {info_.world_size} processes" if info_.world_size > 1 else ""
        self._print(
            f"training in [bold]{info_.run_dir}[/] on {info_.device}{procs}: {info_.train_images} "
            f"images, {info_.num_classes} classes, batch {info_.batch_size}, amp {info_.amp}"
        )
        if not console.is_terminal:  # a log file or pipe: plain lines instead of a live bar
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=16), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"), console=console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=info_.max_iter, completed=info_.start_iter, status=""
        )

    def on_schedule(self, max_iter: int, description: str) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, total=max_iter)
        self.on_notice(f"schedule: {description}")

    def on_iteration(
        self, iteration: int, max_iter: int | None, losses: dict[str, float], lr: float
    ) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=iteration, status=loss_text(losses, lr))
        elif not self.quiet:
            self.lines.update(iteration, max_iter, loss_text(losses, lr))

    def on_eval_start(self, iteration: int, total: int) -> None:
        if self.progress is not None:
            self.eval_task = self.progress.add_task("eval", total=total, status="")

    def on_eval_progress(self, done: int, total: int) -> None:
        if self.progress is not None and self.eval_task is not None:
            self.progress.update(self.eval_task, completed=done, total=total)

    def on_eval(self, iteration: int, metrics: dict[str, Any], best: bool) -> None:
        if self.progress is not None and self.eval_task is not None:
            self.progress.remove_task(self.eval_task)
            self.eval_task = None
        if not self.quiet:
            label = f"iter {iteration}" + (" (best)" if best else "")
            self._print(ap_table([(label, metrics)], title="val mask AP"))

    def on_end(self, summary: TrainSummary) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


@dataclass(frozen=True)
class RichCallbacksFactory:
    """Picklable: spawned training processes build their callbacks from it."""

    quiet: bool = False

    def __call__(self) -> TrainCallbacks:
        return RichTrainCallbacks(self.quiet)


def train(
    config: ConfigOpt = None,
    data: DataOpt = None,
    weights: WeightsOpt = None,
    backbone_weights: Annotated[Path | None, typer.Option(
        "--backbone-weights", help="ImageNet backbone: a checkpoint (torchvision/timm .pth, "
        "detectron2 .pkl), `imagenet` (the config's tag) or a timm tag such as "
        "resnet50.tv_in1k, downloaded once into the Hugging Face cache.")] = None,
    gpus: GpusOpt = 1,
    batch: BatchOpt = None,
    iters: Annotated[int | None, typer.Option(
        "--iters", help="Iterations; the lr schedule is scaled to them, e.g. 2000.")] = None,
    time: Annotated[float | None, typer.Option(
        "--time", help="Minutes of training instead of --iters; the schedule is fitted to the "
        "speed measured over the first tenth of it, e.g. 8.")] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="Run folder under --project (exp, exp2, ... by default).")] = None,
    project: Annotated[Path, typer.Option(
        "--project", help="Folder of the run folders, e.g. runs/train.")] = Path("runs/train"),
    exist_ok: Annotated[bool, typer.Option(
        "--exist-ok", help="Reuse --name's folder instead of making name2.")] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue --name's run (or the latest) from its last.pth.")] = False,
    amp: Annotated[str | None, typer.Option(
        "--amp", help="Mixed precision: fp16 (CUDA, loss scaling), bf16, none or auto "
        "(bf16 where the hardware has it).")] = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="cpu, cuda or cuda:N (default: cuda when present).")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", help="Data loading processes per training process, e.g. 2 "
        "(default: data.num_workers, raised to up to 8 on CUDA).")] = None,
    stop_after: Annotated[int | None, typer.Option(
        "--stop-after", hidden=True, help="Stop as if interrupted after N iterations.")] = None,
    overrides: OverridesArg = None,
) -> None:
    """Train on a COCO-format dataset. Example: sparseinst train -c demo -d demo --time 8

    Several GPUs: --gpus 8. Several machines: run on each one
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500
    -m sparseinst_cli train -c r50_giam -d coco_2017 --batch 64
    """
    options = TrainOptions(
        config=config, overrides=list(overrides or []), data=data,
        weights=str(weights) if weights else None,
        backbone_weights=str(backbone_weights) if backbone_weights else None,
        gpus=gpus, batch=batch, iters=iters, time_minutes=time, name=name, project=str(project),
        exist_ok=exist_ok, resume=resume, amp=amp, device=device, workers=workers,
        stop_after=stop_after,
    )
    summary = run_training(options, RichCallbacksFactory(quiet=state.quiet))
    _render(summary)


def _render(summary: TrainSummary) -> None:
    if summary.status != "finished":
        info(
            f"stopped at iteration {summary.iteration}/{summary.max_iter}; {summary.last} saved. "
            f"Continue with: sparseinst train --resume --name {summary.run_dir.name} "
            f"--project {summary.run_dir.parent}"
        )
        raise SystemExit(143 if summary.signal == "SIGTERM" else 130)
    if summary.metrics:
        rows = [(f"iter {summary.iteration}", summary.metrics)]
        print_table(console, ap_table(rows, title="final val mask AP"))
        if summary.metrics.get("per_class"):
            print_table(console, per_class_table([("AP", summary.metrics["per_class"])]))
    best = f", best AP {summary.best_ap:.1f}: {summary.best}" if summary.best_ap is not None else ""
    console.print(f"done: {summary.iteration} iterations in {summary.run_dir}{best}",
                  highlight=False)
