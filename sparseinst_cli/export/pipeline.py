"""`export_model`: a loaded model -> a checked ONNX or TorchScript file, written atomically.

Steps: copy the model with export-friendly pooling and the chosen output layout (graph.py),
write it under a temporary name beside `out`, run the parity check (parity.py) on that file,
and rename it to `out` only when every size passed. A failed check leaves no file behind.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import RunError, UserError
from ..fileio import read_image_rgb
from ..runtime import resolve_device
from . import onnx as onnx_io
from .graph import END_TO_END_OUTPUTS, RAW_OUTPUTS, export_ready, has_deformable
from .int8 import quantize_convolutions, require_quantization
from .parity import (
    DEFAULT_SIZES,
    ParityRow,
    Runner,
    check_parity,
    default_image_path,
    parity_batch,
    reference_runner,
    skipped_rows,
)
from .torchscript import load_torchscript, write_torchscript

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript"}
STATIC_SIZE = (640, 640)  # the official export's fixed size
INPUT_FORMAT = (
    "images: float32 [B, 3, H, W] NCHW, RGB 0-255, H and W multiples of 32, padded bottom/right "
    "with pixel_mean; the graph normalises (x - pixel_mean) / pixel_std itself"
)
OUTPUTS = {
    "raw": "scores [B,N,K] = sqrt(sigmoid(cls) * sigmoid(objectness)); "
    "masks [B,N,H/4,W/4] probabilities",
    "end_to_end": "scores [B,N] best class score x mask quality (mean prob inside mask > "
    "mask_threshold); labels [B,N] int64 0..K-1; keep [B,N] bool (score before rescoring > "
    "cls_threshold); masks [B,N,H/4,W/4] probabilities. No sorting or NMS; resize masks "
    "to the image and threshold at mask_threshold outside the graph",
}

Notify = Callable[[str], None]


@dataclass
class ExportOptions:
    """What `sparseinst export` asks for; see the CLI help for each field."""

    format: str = "onnx"  # onnx | torchscript
    out: Path | None = None  # default: the weights path with .onnx / .torchscript
    dynamic: bool = False  # ONNX: symbolic batch/height/width (TorchScript traces are always)
    end_to_end: bool = False
    opset: int | None = None
    half: bool = False
    size: tuple[int, int] | None = None  # fixed input (h, w) of static graphs; the trace input
    device: str = "cpu"
    exporter: str = "torchscript"  # ONNX exporter: torchscript (dynamo=False) | dynamo
    parity_sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES
    parity_image: Path | None = None
    int8: bool = False  # ONNX: int8 convolutions calibrated on `calibration_images`
    calibration_images: tuple[Path, ...] = ()

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else "fp16" if self.half else "fp32"


@dataclass
class ExportResult:
    path: Path
    format: str
    layout: str
    input_size: str  # "dynamic" or "HxW"
    opset: int | None
    export_seconds: float
    check_seconds: float
    rows: list[ParityRow] = field(default_factory=list)
    written: bool = False

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)


class ParityError(RunError):
    """The export disagreed with PyTorch beyond tolerance; `result` holds the table."""

    def __init__(self, message: str, result: ExportResult):
        super().__init__(message)
        self.result = result


def default_out(weights: str | os.PathLike | None, fmt: str) -> Path:
    base = Path(weights).with_suffix("") if weights else Path("sparseinst")
    return base.with_name(base.name + FORMATS[fmt])


def check_options(options: ExportOptions) -> tuple[int, int]:
    """Validate what needs no model (format, --out suffix, sizes); returns the trace size."""
    if options.format not in FORMATS:
        raise UserError(f"unknown --format '{options.format}'; use onnx or torchscript")
    out = options.out
    if options.format == "onnx" and out is not None and out.suffix.lower() != ".onnx":
        raise UserError(f"--out {out} should end in .onnx (predict recognises ONNX models by it)")
    if options.format == "torchscript" and out is not None and out.suffix.lower() == ".onnx":
        raise UserError(f"--out {out} ends in .onnx but --format is torchscript; use .torchscript")
    size = options.size or (options.parity_sizes[0] if options.dynamic else STATIC_SIZE)
    if options.format == "torchscript":
        size = options.size or options.parity_sizes[0]
    if options.int8:
        if options.format != "onnx":
            raise UserError("--int8 makes an ONNX model; drop --format torchscript")
        if options.half:
            raise UserError("give --int8 or --half, not both")
        if not options.calibration_images:
            raise UserError("--int8 needs calibration images: --data DATA (its train split)")
    if any(s <= 0 or s % 32 for s in size):
        fixed = "x".join(str(max(32, -(-s // 32) * 32)) for s in size)
        raise UserError(f"--size {size[0]}x{size[1]} must be multiples of 32, e.g. --size {fixed}")
    return size


def _metadata(loaded, layout: str, options: ExportOptions, size: str, opset) -> dict:
    cfg = loaded.config
    meta = {
        "producer": f"sparseinst_cli {__version__}",
        "layout": layout,
        "outputs": OUTPUTS[layout],
        "input_format": INPUT_FORMAT,
        "input_size": size,
        "pixel_mean": list(cfg.model.pixel_mean),
        "pixel_std": list(cfg.model.pixel_std),
        "stride": "32",
        "mask_stride": "4",
        "class_names": list(loaded.class_names),
        "category_ids": [int(c) for c in loaded.category_ids],
        "cls_threshold": str(cfg.test.cls_threshold),
        "mask_threshold": str(cfg.test.mask_threshold),
        "precision": options.precision,
        "source": Path(loaded.source).name if loaded.source else "",
        "config": cfg.to_dict(),
    }
    if opset is not None:
        meta.update(exporter=options.exporter, opset=str(opset))
    return meta


@dataclass
class _Plan:
    """Every setting of one export, resolved from the options and the model."""

    out: Path
    device: torch.device
    size: tuple[int, int]  # trace input; the fixed size of static graphs
    dynamic: bool
    opset: int | None
    layout: str
    names: tuple[str, ...]
    deformable: bool
    thresholds: dict[str, float]
    image: np.ndarray  # uint8 RGB parity image
    pixel_mean: list[float]

    @property
    def input_size(self) -> str:
        return "dynamic" if self.dynamic else f"{self.size[0]}x{self.size[1]}"


def _plan(loaded, options: ExportOptions) -> _Plan:
    size = check_options(options)
    is_onnx = options.format == "onnx"
    if is_onnx:  # before any work: torch's exporter needs it too, and says so less helpfully
        onnx_io.require_onnx()
    if options.int8:
        require_quantization()
    deformable = has_deformable(loaded.model)
    test = loaded.config.test
    return _Plan(
        out=Path(options.out or default_out(loaded.source, options.format)),
        device=resolve_device(options.device),
        size=size,
        dynamic=options.dynamic or not is_onnx,
        opset=onnx_io.resolve_opset(options.opset, exporter=options.exporter, deformable=deformable)
        if is_onnx else None,
        layout="end_to_end" if options.end_to_end else "raw",
        names=END_TO_END_OUTPUTS if options.end_to_end else RAW_OUTPUTS,
        deformable=deformable,
        thresholds=dict(cls_threshold=test.cls_threshold, mask_threshold=test.mask_threshold),
        # An int8 graph is checked on the user's own data, whose value ranges it was fitted to.
        image=read_image_rgb(options.parity_image or (
            options.calibration_images[0] if options.int8 else default_image_path())),
        pixel_mean=list(loaded.config.model.pixel_mean),
    )


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary file beside `out`, removed on exit unless renamed into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _publish(tmp: Path, out: Path) -> None:
    """Rename the checked file into place with the usual permissions (mkstemp makes it 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, out)


def export_model(
    loaded, options: ExportOptions, notify: Notify | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Export `loaded` (a loading.LoadedModel) as `options` says; returns the checked result.
    `progress(1)` is called after each int8 calibration image.

    Raises ParityError (nothing written) when the exported graph disagrees with PyTorch.
    """
    notify = notify or (lambda _msg: None)
    plan = _plan(loaded, options)
    model = loaded.model.to(plan.device).eval()
    with _staging(plan.out) as tmp:
        notify(f"exporting {options.format} ({plan.layout}, {plan.input_size}) to {plan.out}")
        t0 = time.perf_counter()
        _write(model, loaded, options, plan, tmp)
        if options.int8:
            count = len(options.calibration_images)
            notify(f"quantizing the convolutions to int8, calibrated on {count} images")
            _quantize(tmp, loaded, options, plan, progress)
        t1 = time.perf_counter()
        sizes = options.parity_sizes if plan.dynamic else (plan.size,)
        notify(f"checking against PyTorch at {', '.join(f'{h}x{w}' for h, w in sizes)}")
        rows = _parity(tmp, model, options, plan, sizes)
        result = ExportResult(
            path=plan.out, format=options.format, layout=plan.layout,
            input_size=plan.input_size, opset=plan.opset, export_seconds=t1 - t0,
            check_seconds=time.perf_counter() - t1, rows=rows,
        )
        if not result.passed:
            raise ParityError(
                "the exported model differs from PyTorch beyond tolerance (table above); "
                f"{plan.out} was not written",
                result,
            )
        _publish(tmp, plan.out)
        result.written = True
    return result


def _write(model, loaded, options: ExportOptions, plan: _Plan, tmp: Path) -> None:
    module = export_ready(
        model, end_to_end=options.end_to_end, half=options.half, **plan.thresholds
    ).to(plan.device)
    example = parity_batch(plan.image, plan.size, plan.pixel_mean).images.to(plan.device)
    metadata = _metadata(loaded, plan.layout, options, plan.input_size, plan.opset)
    if options.format == "onnx":
        onnx_io.write_onnx(
            module, example, tmp, output_names=plan.names, dynamic=plan.dynamic,
            opset=plan.opset, exporter=options.exporter,
        )
        onnx_io.add_metadata(tmp, metadata)
    else:
        write_torchscript(module, example, tmp, metadata=metadata)


def _quantize(
    tmp: Path, loaded, options: ExportOptions, plan: _Plan,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Replace the fp32 graph in `tmp` by its int8 version (metadata kept)."""

    def batches() -> Iterator[np.ndarray]:
        for path in options.calibration_images:
            yield parity_batch(read_image_rgb(path), plan.size, plan.pixel_mean).images.numpy()
            if progress is not None:
                progress(1)

    quantized = tmp.with_name(tmp.name + ".int8")
    try:
        quantize_convolutions(tmp, quantized, batches())
        os.replace(quantized, tmp)
    finally:
        quantized.unlink(missing_ok=True)
    onnx_io.add_metadata(tmp, _metadata(loaded, plan.layout, options, plan.input_size, plan.opset))


def _parity(tmp: Path, model, options: ExportOptions, plan: _Plan, sizes) -> list[ParityRow]:
    half_cpu = options.half and plan.device.type == "cpu"
    if options.format == "torchscript":
        if half_cpu:
            return skipped_rows(sizes, "fp16 TorchScript on CPU is too slow; use --device cuda")
        exported = _torchscript_runner(tmp, plan.names, plan.device)
    else:
        try:
            exported = _onnx_runner(tmp, plan.device)
        except RunError as exc:
            if half_cpu:
                return skipped_rows(sizes, f"fp16 graph not runnable on CPU ({exc})")
            if plan.deformable and "DeformConv" in str(exc):
                raise UserError(
                    "onnxruntime cannot run the ONNX DeformConv operator (opset 19) that this DCN "
                    f"backbone needs ({exc}); upgrade onnxruntime or use --format torchscript"
                ) from None
            raise
    reference = reference_runner(model, end_to_end=options.end_to_end, **plan.thresholds)
    return check_parity(
        reference, exported, plan.image, sizes, pixel_mean=plan.pixel_mean,
        precision=options.precision, **plan.thresholds,
    )


def _onnx_runner(path: Path, device: torch.device) -> Runner:
    from ..loading.onnx_backend import OnnxModel, has_cuda_provider

    if device.type == "cuda" and not has_cuda_provider():
        device = torch.device("cpu")  # CPU onnxruntime: the check still runs, only slower
    model = OnnxModel(path, device=device)

    def run(images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in model.run(images).items()}

    return run


def _torchscript_runner(path: Path, names: tuple[str, ...], device: torch.device) -> Runner:
    module, _ = load_torchscript(path, device)

    @torch.inference_mode()
    def run(images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in zip(names, module(images.to(device)))}

    return run
