"""Write an export-ready module (see graph.py) to ONNX, with SparseInst's metadata inside.

Exporter: by default PyTorch's TorchScript-based exporter (`torch.onnx.export(dynamo=False)`).
With the adaptive pools swapped (graph.py) it gives one graph whose batch, height and width are
all dynamic and names the dynamic axes as asked. The torch.export-based exporter
(`exporter="dynamo"`) gives the same graph and numbers but takes longer; it is kept as an option
because the TorchScript exporter is deprecated upstream.
Deformable convs become the standard ONNX `DeformConv` op (opset >= 19) with either exporter.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError

EXPORTERS = ("torchscript", "dynamo")
MIN_OPSET = {"torchscript": 11, "dynamo": 18}
DEFAULT_OPSET = {"torchscript": 17, "dynamo": 18}
MAX_OPSET = 20
DEFORM_OPSET = 19  # first opset with DeformConv
INPUT_NAME = "images"


def require_onnx():
    """The onnx module, or a UserError naming the extra to install."""
    try:
        import onnx
    except ImportError:
        raise UserError("ONNX export needs onnx: pip install 'sparseinst-cli[export]'") from None
    return onnx


def resolve_opset(opset: int | None, *, exporter: str, deformable: bool) -> int:
    """The opset to write: the user's, else the exporter default (19 for DCN backbones)."""
    if exporter not in EXPORTERS:
        raise UserError(f"unknown ONNX exporter '{exporter}'; use one of {', '.join(EXPORTERS)}")
    if opset is None:
        return max(DEFAULT_OPSET[exporter], DEFORM_OPSET if deformable else 0)
    if not MIN_OPSET[exporter] <= opset <= MAX_OPSET:
        raise UserError(
            f"--opset {opset} is outside {MIN_OPSET[exporter]}..{MAX_OPSET} for the {exporter} "
            f"exporter; e.g. --opset {DEFAULT_OPSET[exporter]}"
        )
    if deformable and opset < DEFORM_OPSET:
        raise UserError(
            f"this DCN backbone needs the ONNX DeformConv operator, which starts at opset "
            f"{DEFORM_OPSET}; use --opset {DEFORM_OPSET}"
        )
    return opset


def _deform_conv_symbolic(
    g, input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w,
    dil_h, dil_w, groups, offset_groups, use_mask,
):
    """torchvision::deform_conv2d -> ONNX DeformConv (opset 19) for the TorchScript exporter."""
    from torch.onnx import symbolic_helper as sh

    kernel = sh._get_tensor_sizes(weight)[2:]
    args = [input, weight, offset, bias] + ([mask] if sh._parse_arg(use_mask, "b") else [])
    return g.op(
        "DeformConv",
        *args,
        dilations_i=[sh._parse_arg(dil_h, "i"), sh._parse_arg(dil_w, "i")],
        group_i=sh._parse_arg(groups, "i"),
        offset_group_i=sh._parse_arg(offset_groups, "i"),
        kernel_shape_i=kernel,
        pads_i=[sh._parse_arg(pad_h, "i"), sh._parse_arg(pad_w, "i")] * 2,
        strides_i=[sh._parse_arg(stride_h, "i"), sh._parse_arg(stride_w, "i")],
    )


def _register_deform_conv(opset: int) -> None:
    if opset >= DEFORM_OPSET:
        torch.onnx.register_custom_op_symbolic(
            "torchvision::deform_conv2d", _deform_conv_symbolic, DEFORM_OPSET
        )


def write_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    output_names: tuple[str, ...],
    dynamic: bool,
    opset: int,
    exporter: str = "torchscript",
) -> None:
    """Export `module` (images [B,3,H,W] -> outputs) to `path`.

    dynamic: batch, height and width are symbolic (H and W must stay multiples of 32);
    otherwise the graph takes exactly `example`'s shape.
    """
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation notices are not for users
        if exporter == "dynamo":
            _export_dynamo(module, example, path, output_names, dynamic, opset)
        else:
            _register_deform_conv(opset)
            axes = None
            if dynamic:
                axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
                for name in output_names:
                    axes[name] = {0: "batch"}
                axes["masks"] = {0: "batch", 2: "height_4", 3: "width_4"}
            torch.onnx.export(
                module, (example,), str(path), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=list(output_names),
                dynamic_axes=axes, do_constant_folding=True,
            )


def _export_dynamo(
    module: nn.Module, example: torch.Tensor, path: Path,
    output_names: tuple[str, ...], dynamic: bool, opset: int,
) -> None:
    shapes = None
    if dynamic:
        dim = torch.export.Dim
        h32, w32 = dim("height_32", min=1, max=512), dim("width_32", min=1, max=512)
        shapes = {"images": {0: dim("batch", max=1024), 2: 32 * h32, 3: 32 * w32}}
    program = torch.onnx.export(
        module, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
        output_names=list(output_names), dynamic_shapes=shapes, verbose=False,
    )
    program.save(str(path))


def add_metadata(path: Path, metadata: dict[str, object]) -> None:
    """Write `metadata` into the model's metadata_props (lists and dicts as JSON) and check it."""
    onnx = require_onnx()
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def read_metadata(path: Path) -> dict[str, str]:
    """metadata_props of an .onnx file as key -> string, without loading the weights."""
    model = require_onnx().load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
