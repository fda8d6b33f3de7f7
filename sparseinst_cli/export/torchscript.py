"""Write an export-ready module (see graph.py) to TorchScript by tracing, metadata inside.

Tracing records the shape arithmetic (coordinate channels, the pooling windows of
`DynamicAdaptiveAvgPool2d`, resize sizes) as graph ops, so one trace runs at every batch size and
every input size that is a multiple of 32; the parity check runs it at two sizes to prove it.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

METADATA_FILE = "sparseinst.json"


def write_torchscript(
    module: nn.Module, example: torch.Tensor, path: Path, *, metadata: dict[str, object]
) -> None:
    """Trace `module` (images [B,3,H,W] -> outputs) on `example` and save it with `metadata`."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent Python values
        traced = torch.jit.trace(module, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: json.dumps(metadata)})


def load_torchscript(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.jit.ScriptModule, dict[str, object]]:
    """A saved export and its metadata (the dict given to `write_torchscript`)."""
    extra = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    raw = extra[METADATA_FILE]
    return module.eval(), json.loads(raw.decode() if isinstance(raw, bytes) else raw or "{}")
