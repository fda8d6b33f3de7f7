"""`sparseinst export`: a checkpoint -> ONNX or TorchScript, checked against PyTorch."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from ..data.coco import CocoInstances
from ..data.datasets import resolve_split
from ..errors import UserError
from ..export import (
    DEFAULT_SIZES,
    ExportOptions,
    ExportResult,
    ParityError,
    check_options,
    export_model,
)
from ..loading import load_model
from .console import PlainLines, console, info, state
from .options import ConfigOpt, DataOpt, DeviceOpt, WeightsOpt

CALIBRATION_IMAGES = 100


def parse_hw(text: str, option: str) -> tuple[int, int]:
    """'640' -> (640, 640); '608x800' -> (608, 800)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise UserError(f"{option} {text!r} is not a size; write 640 or 608x800 (height x width)")
    return (values[0], values[-1])


def export(
    weights: WeightsOpt = None,
    config: ConfigOpt = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="onnx or torchscript, e.g. --format onnx.")
    ] = "onnx",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Output file, e.g. model.onnx (default: the weights path with "
            ".onnx or .torchscript).",
        ),
    ] = None,
    dynamic: Annotated[
        bool,
        typer.Option("--dynamic", help="ONNX: dynamic batch, height and width (multiples of 32)."),
    ] = False,
    end_to_end: Annotated[
        bool,
        typer.Option(
            "--end-to-end",
            help="Outputs per query: rescored score, label, keep flag, mask probabilities "
            "(default: class scores and mask probabilities).",
        ),
    ] = False,
    opset: Annotated[
        int | None, typer.Option("--opset", help="ONNX opset (default 17; 19 for DCN), e.g. 19.")
    ] = None,
    half: Annotated[
        bool, typer.Option("--half", help="fp16 weights and compute (for GPUs); fp32 in and out.")
    ] = False,
    size: Annotated[
        str | None,
        typer.Option(
            "--size", help="Input HxW of a static graph (default 640x640) or of the trace, "
            "e.g. 608x800.",
        ),
    ] = None,
    device: DeviceOpt = "cpu",
    exporter: Annotated[
        str,
        typer.Option(
            "--exporter", help="ONNX exporter: torchscript (fast) or dynamo (torch.export)."
        ),
    ] = "torchscript",
    check_size: Annotated[
        list[str] | None,
        typer.Option(
            "--check-size",
            help="Sizes of the parity check of dynamic exports; repeat, e.g. --check-size 320x480.",
        ),
    ] = None,
    int8: Annotated[
        bool,
        typer.Option("--int8", help="ONNX with int8 convolutions (ONNX Runtime on CPUs), "
                     "calibrated on --data's train images."),
    ] = False,
    data: DataOpt = None,
    calib_images: Annotated[
        int, typer.Option("--calib-images", help="With --int8: images to calibrate on, e.g. 100.")
    ] = CALIBRATION_IMAGES,
) -> None:
    """Export a model, then check it against PyTorch. Example:
    sparseinst export -w model.pth --format onnx --dynamic --out model.onnx"""
    if weights is None:
        raise UserError("export needs --weights, e.g. --weights model.pth (official: + --config)")
    options = ExportOptions(
        format=fmt.lower(), out=out, dynamic=dynamic, end_to_end=end_to_end, opset=opset,
        half=half, size=parse_hw(size, "--size") if size else None, device=device,
        exporter=exporter.lower(),
        parity_sizes=tuple(parse_hw(s, "--check-size") for s in check_size)
        if check_size else DEFAULT_SIZES,
        int8=int8, calibration_images=_calibration_images(int8, data, calib_images),
    )
    check_options(options)  # fail fast, before loading weights
    loaded = load_model(weights, config)
    lines = None  # int8 calibration in a log file or pipe: plain progress lines
    if options.int8 and not state.quiet and not console.is_terminal:
        lines = PlainLines("calibrate")
    total = len(options.calibration_images)
    try:
        result = export_model(
            loaded, options, notify=info,
            progress=(lambda n: lines.advance(n, total)) if lines else None,
        )
    except ParityError as exc:
        _render(exc.result)
        raise
    _render(result)


def _calibration_images(int8: bool, data: str | None, count: int) -> tuple[Path, ...]:
    """`count` images spread evenly over --data's train split (its val split if it has none)."""
    if not int8:
        if data is not None:
            raise UserError("--data is for --int8 (the images it calibrates on)")
        return ()
    if data is None:
        raise UserError("--int8 needs calibration images: --data DATA (its train split)")
    if count < 1:
        raise UserError(f"--calib-images {count} must be at least 1")
    try:
        split = resolve_split(data, "train")
    except UserError:
        split = resolve_split(data, "val")
    source = CocoInstances(annotations=split.annotations, images=split.images,
                           filter_empty=False)
    if source.notice:
        info(source.notice)
    ids = source.image_ids
    picked = np.linspace(0, len(ids) - 1, num=min(count, len(ids))).round().astype(int)
    return tuple(source.image_path(ids[i]) for i in dict.fromkeys(picked.tolist()))


def _fmt(value: float) -> str:
    return "-" if value != value else f"{value:.2e}"  # NaN: not measured


def _caption(result: ExportResult) -> str | None:
    checked = [r for r in result.rows if not r.skipped]
    if not checked:
        return None
    r = checked[0]
    extra = f" ({r.note})" if r.note else ""
    if r.tolerance != r.tolerance:  # NaN: compared object by object (int8)
        return f"pass: mask IoU >= {r.min_iou_required:g}{extra}"
    if r.mask_tolerance == r.tolerance:
        diffs = f"max|diff| <= {r.tolerance:g}"
    else:
        diffs = f"scores' max|diff| <= {r.tolerance:g}, masks' <= {r.mask_tolerance:g}"
    return f"pass: {diffs} and mask IoU >= {r.min_iou_required:g}{extra}"


def _render(result: ExportResult) -> None:
    if state.quiet:
        return
    table = Table(title=f"{result.format} ({result.layout}) vs PyTorch", caption=_caption(result))
    columns = ("input", "scores |d|", "masks |d|", "inst", "min IoU", "torch ms", "export ms",
               "result")
    for column in columns:
        table.add_column(column, justify="left" if column in ("input", "result") else "right")
    for r in result.rows:
        verdict = "[yellow]skipped[/]" if r.skipped else (
            "[green]pass[/]" if r.passed else "[red]FAIL[/]"
        )
        table.add_row(
            f"{r.size[0]}x{r.size[1]}", _fmt(r.score_diff), _fmt(r.mask_diff), str(r.instances),
            "-" if r.min_iou is None else f"{r.min_iou:.4f}",
            f"{r.reference_ms:.0f}", f"{r.exported_ms:.0f}", verdict,
        )
    console.print(table)
    for note in dict.fromkeys(
        r.note if r.skipped else r.mismatch for r in result.rows if r.skipped or r.mismatch
    ):
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    timing = f"export {result.export_seconds:.1f} s, check {result.check_seconds:.1f} s"
    if result.written:
        mb = Path(result.path).stat().st_size / 1e6
        console.print(
            f"wrote {result.path} ({mb:.1f} MB, input {result.input_size}"
            + (f", opset {result.opset}" if result.opset else "") + f"; {timing})",
            highlight=False,
        )
