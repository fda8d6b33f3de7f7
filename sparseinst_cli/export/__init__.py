"""ONNX / TorchScript export with a built-in parity check against the PyTorch model.

graph.py: export-friendly model copy (dynamic adaptive pooling) and the output layouts;
onnx.py / torchscript.py: writers; parity.py: the self-check; pipeline.py: `export_model`.
"""
from .graph import DynamicAdaptiveAvgPool2d, adaptive_avg_pool2d, export_ready
from .parity import DEFAULT_SIZES, TOLERANCE, ParityRow
from .pipeline import (
    ExportOptions,
    ExportResult,
    ParityError,
    check_options,
    default_out,
    export_model,
)

__all__ = [
    "DEFAULT_SIZES",
    "TOLERANCE",
    "DynamicAdaptiveAvgPool2d",
    "ExportOptions",
    "ExportResult",
    "ParityError",
    "ParityRow",
    "adaptive_avg_pool2d",
    "check_options",
    "default_out",
    "export_ready",
    "export_model",
]
