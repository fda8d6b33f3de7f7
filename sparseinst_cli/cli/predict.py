"""`sparseinst predict`: images, folders, globs, videos -> pictures, JSON and label maps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..engine.predict import PredictOptions, run_predict
from ..errors import RunError, UserError
from ..media.sources import count_pictures, expand_sources
from ..predictor import Predictor
from ..training.signals import sigterm_as_ctrl_c
from .console import console, err_console, info, progress_bar, state
from .options import (
    BatchOpt,
    ConfigOpt,
    DeviceOpt,
    DtypeOpt,
    MaxSizeOpt,
    OutOpt,
    SizeOpt,
    WeightsOpt,
)


def predict(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Images, folders, globs ('imgs/*.jpg'), videos, .txt lists; e.g. images/ a.mp4."
        ),
    ],
    weights: WeightsOpt = None,
    config: ConfigOpt = None,
    out: OutOpt = Path("runs/predict"),
    conf: Annotated[
        float, typer.Option("--conf", help="Minimum final score to keep, e.g. 0.3.")
    ] = 0.3,
    mask_thr: Annotated[
        float | None, typer.Option("--mask-thr", help="Mask probability threshold, e.g. 0.45.")
    ] = None,
    max_det: Annotated[
        int | None, typer.Option("--max-det", help="Most detections per image, e.g. 100.")
    ] = None,
    size: SizeOpt = None,
    max_size: MaxSizeOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "fp32",
    batch: BatchOpt = 1,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Search folders recursively.")
    ] = False,
    save_json: Annotated[
        bool,
        typer.Option("--save-json", help="Write predictions.json (COCO results with RLE masks)."),
    ] = False,
    save_masks: Annotated[
        bool,
        typer.Option("--save-masks", help="Write an instance-label PNG per image under masks/."),
    ] = False,
    no_images: Annotated[
        bool, typer.Option("--no-images", help="Do not write the overlay pictures.")
    ] = False,
) -> None:
    """Segment images and videos.

    Example: sparseinst predict images/ --weights model.pth --out viz/
    """
    if weights is None:
        raise UserError("predict needs --weights (a .pth checkpoint or an exported .onnx model)")
    items = expand_sources(sources, recursive=recursive)
    predictor = Predictor(
        weights,
        config,
        device=device,
        dtype=dtype,
        min_size=size,
        max_size=max_size,
        mask_threshold=mask_thr,
        max_detections=max_det,
    )
    opts = PredictOptions(
        out_dir=out,
        conf=conf,
        batch=batch or 1,
        save_images=not no_images,
        save_json=save_json,
        save_masks=save_masks,
    )
    total = count_pictures(items)
    try:
        with sigterm_as_ctrl_c(), progress_bar("predict", total, quiet=state.quiet,
                                               unit="img") as advance:
            summary = run_predict(predictor, items, opts, advance)
    except KeyboardInterrupt:  # Typer would exit 130 without a word
        err_console.print(f"[bold red]error:[/] interrupted; the finished outputs are in {out}",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    done = summary.images + summary.frames
    if done:
        _render_summary(summary, out)
    if len(summary.skipped) == 1:  # one line says it all
        path, reason = summary.skipped[0]
        rest = f"; the rest are in {out}" if done else ""
        raise RunError(f"skipped {path}: {reason}{rest}")
    if summary.skipped:
        for path, reason in summary.skipped:
            info(f"[yellow]skipped[/] {path}: {reason}")
        rest = f"the rest are in {out}" if done else "nothing was written"
        raise RunError(f"{len(summary.skipped)} input(s) skipped (listed above); {rest}")


def _render_summary(summary, out: Path) -> None:
    n = max(summary.processed, 1)
    table = Table(title=f"predict -> {out}")
    for column in (
        "images",
        "video frames",
        "instances",
        "pre ms/img",
        "model ms/img",
        "post ms/img",
        "img/s",
    ):
        table.add_column(column, justify="right")
    secs = summary.seconds
    table.add_row(
        str(summary.images),
        str(summary.frames),
        str(summary.instances),
        f"{secs['pre'] * 1000 / n:.1f}",
        f"{secs['model'] * 1000 / n:.1f}",
        f"{secs['post'] * 1000 / n:.1f}",
        f"{summary.pictures_per_second:.1f}",
    )
    if not state.quiet:
        console.print(table)
