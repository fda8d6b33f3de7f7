"""INT8 ONNX models: static quantization with ONNX Runtime, calibrated on the user's images.

Only the convolutions are quantized (QDQ, weights per output channel, activations per tensor
from the calibration images' ranges); everything after them stays float: the activation-map
normalisation, the sigmoids and the kernel x mask-feature product, which lose most in 8 bits
(Ultralytics keeps its heads float for the same reason). ONNX Runtime fuses each
Dequantize-Conv-Quantize into an integer convolution (VNNI / AMX on x86, dot products on Arm).
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..errors import UserError

INPUT_NAME = "images"
# Convolutions kept float besides the heads' ops: the centre heatmap decides where peak anchors
# sit, and a peak moved by one cell moves a whole instance (crowded stand-in, `small` config:
# 52.6 AP in int8 with this conv float, against 52.9 for the fp32 graph).
FLOAT_CONVS = ("/centre_head/",)


def require_quantization():
    try:
        from onnxruntime import quantization
    except ImportError:
        raise UserError(
            "INT8 export needs onnxruntime: pip install 'sparseinst-cli[export]'"
        ) from None
    return quantization


def quantize_convolutions(src: Path, dst: Path, calibration: Iterable[np.ndarray]) -> int:
    """Write `src` (fp32 ONNX) to `dst` with int8 convolutions; returns the images calibrated
    on. `calibration` yields float32 [1, 3, H, W] inputs, as the graph takes them."""
    q = require_quantization()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    seen = 0

    class Reader(q.CalibrationDataReader):
        def __init__(self, batches: Iterator[np.ndarray]):
            self.batches = batches

        def get_next(self) -> dict[str, np.ndarray] | None:
            nonlocal seen
            batch = next(self.batches, None)
            if batch is None:
                return None
            seen += 1
            return {INPUT_NAME: batch}

    import onnx

    keep_float = [node.name for node in onnx.load(str(src), load_external_data=False).graph.node
                  if node.op_type == "Conv" and any(k in node.name for k in FLOAT_CONVS)]
    with tempfile.TemporaryDirectory(prefix="sparseinst-int8-") as work:
        prepared = Path(work) / "prepared.onnx"
        # Constant folding and shape inference first, as ONNX Runtime recommends, so that each
        # conv's bias and the BatchNorm folded into it are quantized with it.
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        q.quantize_static(
            str(prepared), str(dst), Reader(iter(calibration)),
            quant_format=q.QuantFormat.QDQ, per_channel=True,
            activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
            op_types_to_quantize=["Conv"], nodes_to_exclude=keep_float,
            calibrate_method=q.CalibrationMethod.MinMax,
        )
    if seen == 0:
        raise UserError("no calibration image: --data's split has no image to calibrate on")
    return seen
