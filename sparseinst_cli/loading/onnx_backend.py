"""Run an exported SparseInst ONNX model with onnxruntime behind the PyTorch model's interface.

`OnnxModel(images)` takes what `SparseInst` takes (RGB float32 0-255 [B, 3, Hp, Wp], padded with
the pixel mean to multiples of 32) and returns what it returns (pred_logits [B,N,K],
pred_scores [B,N,1], pred_masks [B,N,Hp/4,Wp/4], logits), so `Predictor` and post-processing run
unchanged. The raw layout stores probabilities; they are mapped back to logits that give the
same probabilities: pred_logits = logit(scores^2) and pred_scores = +100 (sigmoid = 1.0 exactly in
float32), so sqrt(sigmoid(cls) * sigmoid(obj)) = scores; pred_masks = logit(masks).

`loading.load_model` wraps an `OnnxModel` in the `LoadedModel` it returns for .pth files, with
the config, class names and category ids read from the ONNX metadata.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RunError, UserError
from ..runtime import available_cpus

SATURATED_OBJECTNESS = 100.0  # sigmoid(100.0) == 1.0 in float32


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            "running .onnx models needs onnxruntime: pip install 'sparseinst-cli[export]'"
        ) from None
    return onnxruntime


def has_cuda_provider() -> bool:
    """True when this onnxruntime build can run on NVIDIA GPUs (onnxruntime-gpu)."""
    return "CUDAExecutionProvider" in _onnxruntime().get_available_providers()


def providers_for(device: str | torch.device) -> list[str]:
    """onnxruntime execution providers for a torch device name; a UserError if not available."""
    device = torch.device(device)
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    available = _onnxruntime().get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise UserError(
            f"--device {device} asks for CUDA, but this onnxruntime has only "
            f"{', '.join(available)}; install onnxruntime-gpu or use --device cpu"
        )
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


def create_session(path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """An onnxruntime InferenceSession; unreadable files and missing kernels are one-line errors."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # no shape warnings for dynamic outputs
    if torch.device(device).type == "cpu":
        # The cores this process may use (ONNX Runtime counts the host's), and no spinning
        # after a run: post-processing in torch follows at once and needs those cores (R-50
        # G-IAM int8 at 864x576, 2 cores: forward 194 -> 171 ms, post-processing 44 -> 24 ms).
        options.intra_op_num_threads = available_cpus()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=providers_for(device))
    except Exception as exc:  # onnxruntime raises its own Fail / NotImplemented / InvalidGraph
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        if "NOT_IMPLEMENTED" in str(exc) or "NotImplemented" in type(exc).__name__:
            raise RunError(f"onnxruntime {ort.__version__} cannot run {path}: {text}") from None
        raise UserError(f"{path} is not a model onnxruntime can load ({text})") from None


def read_metadata(session: Any) -> dict[str, str]:
    """The `metadata_props` written by `sparseinst export` (key -> string)."""
    return dict(session.get_modelmeta().custom_metadata_map)


def raw_outputs_from_probs(scores: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """scores [B,N,K], masks [B,N,h,w] probabilities -> SparseInst's logits (see module doc)."""
    p = scores.double().square().clamp(0.0, 1.0)
    # Masks in float32, on one copy: sigmoid(logit(m)) gives m back within 1e-7 (0 and 1 as -inf
    # and inf); in float64, 100 masks of 152x216 took 60 ms on 2 cores (float32: 3 ms), a
    # quarter of R-50 G-IAM's int8 forward pass.
    masks = masks.float().clamp(0.0, 1.0).logit_()
    return {
        "pred_logits": torch.logit(p).float(),
        "pred_scores": torch.full(
            (*scores.shape[:2], 1), SATURATED_OBJECTNESS, dtype=torch.float32, device=scores.device
        ),
        "pred_masks": masks,
    }


class OnnxModel:
    """An exported SparseInst graph with `SparseInst`'s call contract (see the module doc)."""

    def __init__(self, path: str | os.PathLike, *, device: str | torch.device = "cpu"):
        self.path = Path(path)
        self.device = torch.device(device)
        self.session = create_session(self.path, self.device)
        self.metadata = read_metadata(self.session)
        if "layout" not in self.metadata:
            raise UserError(
                f"{path} has no SparseInst metadata; "
                "export it with `sparseinst export --format onnx`"
            )
        self.layout = self.metadata["layout"]
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.pixel_mean = json.loads(self.metadata["pixel_mean"])
        self.num_classes = len(json.loads(self.metadata["class_names"]))
        shape = self.session.get_inputs()[0].shape  # [B, 3, H, W]; str or None where dynamic
        fixed = all(isinstance(s, int) for s in shape[2:])
        self.fixed_hw: tuple[int, int] | None = (shape[2], shape[3]) if fixed else None
        self.fixed_batch: int | None = shape[0] if isinstance(shape[0], int) else None

    # nn.Module-like methods Predictor calls
    def to(self, device: str | torch.device) -> OnnxModel:
        device = torch.device(device)
        if device != self.device:
            self.device = device
            self.session = create_session(self.path, device)
        return self

    training = False  # a graph only infers

    def eval(self) -> OnnxModel:
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        if mode:
            raise UserError(f"{self.path} is an exported graph: it cannot be trained")
        return self

    def run(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """[B, 3, Hp, Wp] float 0-255 -> the graph's named outputs (numpy).

        Static graphs get each image padded to their fixed size with the pixel mean (the padding
        changes the numbers slightly, as it does in PyTorch); mask maps come back at that size.
        """
        x = images.detach().float().cpu()
        if self.fixed_hw is not None:
            x = self._pad_to_fixed(x)
        if self.fixed_batch is not None and x.shape[0] != self.fixed_batch:
            parts = [self._run(x[i : i + 1]) for i in range(x.shape[0])]
            return {k: np.concatenate([p[k] for p in parts]) for k in self.output_names}
        return self._run(x)

    def _run(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, {self.input_name: x.numpy()})
        return dict(zip(self.output_names, outputs))

    def _pad_to_fixed(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.fixed_hw
        if x.shape[-2] > h or x.shape[-1] > w:
            raise UserError(
                f"{self.path.name} takes {h}x{w} images, but this one is padded to "
                f"{x.shape[-2]}x{x.shape[-1]}; lower --size/--max-size or export with --dynamic"
            )
        if x.shape[-2:] == (h, w):
            return x
        fill = torch.tensor(self.pixel_mean, dtype=x.dtype).view(1, 3, 1, 1)
        out = fill.expand(x.shape[0], 3, h, w).clone()
        out[..., : x.shape[-2], : x.shape[-1]] = x
        return out

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [B,3,Hp,Wp] -> pred_logits [B,N,K], pred_scores [B,N,1], pred_masks [B,N,h,w]."""
        if self.layout != "raw":
            raise UserError(
                f"{self.path.name} was exported with --end-to-end; predict needs the raw layout: "
                "export again without --end-to-end"
            )
        out = self.run(images)
        scores = torch.from_numpy(out["scores"]).float()
        masks = torch.from_numpy(out["masks"]).float()
        return {k: v.to(images.device) for k, v in raw_outputs_from_probs(scores, masks).items()}


def is_onnx_file(path: str | os.PathLike | None) -> bool:
    return path is not None and str(path).lower().endswith(".onnx")
