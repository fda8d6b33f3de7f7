"""Whether a graph is being captured (tracing, scripting, torch.compile, ONNX export)."""

from __future__ import annotations

import torch


def capturing_graph() -> bool:
    """Fast eager-only kernels step aside while a graph is captured: exported graphs keep the
    standard operators (Conv, DeformConv) that runtimes know."""
    return bool(
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
    )
