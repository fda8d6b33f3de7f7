"""Starting weights for training: a whole SparseInst checkpoint (fine-tuning) or an ImageNet
backbone checkpoint (torchvision, timm or detectron2 layout), loaded as far as they fit.

What does not fit is reported as (tensor name, reason) rows; the CLI prints them as a table.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..loading.checkpoint import (
    LoadReport,
    _rename_backbone_key,
    compare_state_dicts,
    load_weights,
    read_checkpoint,
)

CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.", "linear.", "pred_")


def load_finetune_weights(model: nn.Module, path: str | Path, *, layout: str) -> LoadReport:
    """Load ours or an official checkpoint into `model`, keeping what fits; the class head of
    another class count stays at its (fresh) initialisation."""
    return load_weights(model, read_checkpoint(path), layout=layout, strict=False)


def skipped_rows(report: LoadReport) -> list[tuple[str, str]]:
    """(tensor, why it was skipped) for every tensor a non-strict load left out."""
    rows = []
    for key, ckpt_shape, model_shape in report.mismatched:
        why = f"shape {list(ckpt_shape)} in the checkpoint, {list(model_shape)} in the model"
        if "cls_score" in key:
            why += ": another class count, re-initialised"
        rows.append((key, why))
    rows += [(key, "not in the checkpoint: keeps its initialisation") for key in report.missing]
    rows += [(key, "not in the model: ignored") for key in report.unexpected]
    return rows


# --------------------------------------------------------------------------- ImageNet backbones


def load_backbone_weights(body: nn.Module, path: str | Path) -> LoadReport:
    """Load an ImageNet classification checkpoint into the timm backbone `body`.

    Accepts torchvision / timm state dicts (`.pth`, `.pt`, `.bin`, `.safetensors`, optionally
    under "model" or "state_dict", "module." prefixes allowed) and detectron2 `.pkl` files
    (numpy arrays, detectron2 or Caffe2 names). The classifier is dropped silently. Note:
    detectron2's MSRA Caffe2 ResNets put the stride in the 1x1 conv; these weights load into
    the torchvision-style ResNet here but fit it less well than torchvision's.
    """
    path = Path(path)
    state = _read_any(path)
    state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    if any(k.startswith(("stem.", "res2.")) for k in state) or _is_caffe2(state):
        state = {_rename_backbone_key(_caffe2_to_d2(k), "detectron2"): v for k, v in state.items()}
    fitting, report = compare_state_dicts(body, state)
    if not fitting:
        raise UserError(
            f"no tensor of {path} fits backbone {type(body).__name__} (first keys: "
            f"{', '.join(list(state)[:3])}); give the ImageNet checkpoint of the config's backbone"
        )
    body.load_state_dict(fitting, strict=False)
    report.missing = [k for k in report.missing if not k.endswith("num_batches_tracked")]
    return report


def _read_any(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".pkl":
        obj = _read_numpy_pickle(path)
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path))
    else:
        obj = _torch_load(path)
    for key in ("model", "state_dict"):
        while isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    state = {}
    for key, value in obj.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if isinstance(value, torch.Tensor):
            state[re.sub(r"^(module\.)?(backbone\.)?(body\.|bottom_up\.)?", "", key)] = value
    return state


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"backbone weights not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(
            f"{path} is not a weights-only PyTorch checkpoint ({first}); re-save its state dict "
            "with torch.save(model.state_dict(), path)"
        ) from None


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain containers; refuses every other class (no code runs)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_numpy_pickle(path: Path) -> dict[str, Any]:
    """A detectron2 `.pkl`: {"model": {name: ndarray}} (or the bare dict), pickled by Python."""
    if not path.is_file():
        raise UserError(f"backbone weights not found: {path}")
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError) as exc:
        raise UserError(
            f"{path} is not a detectron2 weights file made of numpy arrays ({exc}); "
            "convert it to a state dict with torch.save"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not hold a dict of arrays")
    return obj


# Caffe2 (MSRA) ResNet names -> detectron2 names, as detectron2's c2 name conversion does.
_C2_RULES = [
    (r"^(res_)?conv1$", "stem.conv1"),
    (r"^res(\d)_(\d+)_branch1$", r"res\1.\2.shortcut"),
    (r"^res(\d)_(\d+)_branch2([abc])$", lambda m: f"res{m[1]}.{m[2]}.conv{'abc'.index(m[3]) + 1}"),
]
_C2_NORM = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}


def _is_caffe2(state: dict[str, Any]) -> bool:
    return "conv1_w" in state or any(k.startswith("res2_0_") for k in state)


def _caffe2_to_d2(key: str) -> str:
    """`res2_0_branch2a_bn_s` -> `res2.0.conv1.norm.weight`; other names pass unchanged."""
    if "_bn_" in key:
        base, suffix = key.rsplit("_bn_", 1)
        tail = f".norm.{_C2_NORM.get(suffix, suffix)}"
    elif key.endswith(("_w", "_b")):
        base, tail = key[:-2], (".weight" if key.endswith("_w") else ".bias")
    else:
        return key
    for pattern, repl in _C2_RULES:
        new, n = re.subn(pattern, repl, base)
        if n:
            return new + tail
    return key
