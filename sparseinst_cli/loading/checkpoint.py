"""Checkpoints: our self-describing format, the official key map, strict loading, atomic saves.

Official releases are `torch.save({"model": state_dict, ...})` with detectron2 (R-50/R-101),
timm (R-50-vd, CSPDarkNet) or original-PVT key names. Every rename lives in `official_to_internal`.
Our format adds the config, class names and dataset category ids, so `--weights` alone rebuilds
the model.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..fileio import atomic_write_bytes

FORMAT_TAG = "sparseinst_cli"
FORMAT_VERSION = 1

# detectron2 ResNet names -> timm/torchvision ResNet names (applied after the "backbone." prefix).
_DETECTRON2_RULES = [
    (re.compile(r"^stem\.conv1\.norm\."), "bn1."),
    (re.compile(r"^stem\.conv1\."), "conv1."),
    (
        re.compile(r"^res(\d)\.(\d+)\.shortcut\.norm\."),
        lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.1.",
    ),
    (
        re.compile(r"^res(\d)\.(\d+)\.shortcut\."),
        lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.0.",
    ),
    (
        re.compile(r"^res(\d)\.(\d+)\.conv(\d)\.norm\."),
        lambda m: f"layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.",
    ),
    (
        re.compile(r"^res(\d)\.(\d+)\.conv2_offset\."),
        lambda m: f"layer{int(m[1]) - 1}.{m[2]}.conv2.offset.",
    ),
    (
        re.compile(r"^res(\d)\.(\d+)\.conv(\d)\."),
        lambda m: f"layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.",
    ),
]
LAYOUTS = ("detectron2", "timm", "pvt")


def _rename_backbone_key(key: str, layout: str) -> str:
    if layout == "detectron2":
        for pattern, repl in _DETECTRON2_RULES:
            new, n = pattern.subn(repl, key, count=1)
            if n:
                return new
        return key
    # timm names; the DCN offset conv sits inside our deformable conv module.
    return re.sub(r"\.conv2_offset\.", ".conv2.offset.", key)


def official_to_internal(
    state_dict: dict[str, torch.Tensor], layout: str
) -> dict[str, torch.Tensor]:
    """Rename an official SparseInst state dict to this package's module names."""
    if layout not in LAYOUTS:
        raise UserError(f"checkpoint layout '{layout}' is not one of {', '.join(LAYOUTS)}")
    backbone = {
        k[len("backbone.") :]: v for k, v in state_dict.items() if k.startswith("backbone.")
    }
    rest = {k: v for k, v in state_dict.items() if not k.startswith("backbone.")}
    if layout == "pvt":
        from timm.models.pvt_v2 import checkpoint_filter_fn

        backbone = checkpoint_filter_fn(backbone, None)
    renamed = {f"backbone.body.{_rename_backbone_key(k, layout)}": v for k, v in backbone.items()}
    return {**renamed, **rest}


# --------------------------------------------------------------------------- reading


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """torch.load with `weights_only=True` (never executes pickled code), with clear errors."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; --weights takes a checkpoint file, e.g. model.pth")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if not _looks_like_torch_save(path):
        raise UserError(
            f"{path} is not a PyTorch checkpoint (neither a torch.save archive nor a pickle)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((line.strip() for line in str(exc).splitlines()
                       if "Unsupported global" in line), "")
        raise UserError(
            f"{path} holds Python objects that a safe (weights-only) load refuses to run"
            f"{' (' + detail[:150] + ')' if detail else ''}; "
            "re-save it with torch.save({'model': model.state_dict()})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(
            f"{path} is not a readable PyTorch checkpoint ({_first_line(exc)})"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"model": obj}  # a bare state dict
    raise UserError(f"{path} is not a SparseInst checkpoint (no 'model' state dict inside)")


def _looks_like_torch_save(path: Path) -> bool:
    """torch.save writes a zip archive (since PyTorch 1.6) or, before, a pickle (0x80 first)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def is_ours(ckpt: dict[str, Any]) -> bool:
    return FORMAT_TAG in ckpt


def internal_state_dict(ckpt: dict[str, Any], layout: str) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint under this package's names."""
    state = {k.removeprefix("module."): v for k, v in ckpt["model"].items()}
    if is_ours(ckpt) or any(k.startswith("backbone.body.") for k in state):
        return state
    return official_to_internal(state, layout)


# --------------------------------------------------------------------------- loading


@dataclass
class LoadReport:
    """What a non-strict load left out; empty lists mean every tensor was loaded."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 6) -> str:
        parts = []
        if self.mismatched:
            shown = ", ".join(
                f"{k} checkpoint {list(a)} vs model {list(b)}"
                for k, a, b in self.mismatched[:limit]
            )
            parts.append(f"{len(self.mismatched)} with other shapes ({shown})")
        if self.missing:
            parts.append(f"{len(self.missing)} missing ({', '.join(self.missing[:limit])})")
        if self.unexpected:
            parts.append(
                f"{len(self.unexpected)} unexpected ({', '.join(self.unexpected[:limit])})"
            )
        return "; ".join(parts)


def compare_state_dicts(
    model: nn.Module, state: dict[str, torch.Tensor]
) -> tuple[dict, LoadReport]:
    """Split `state` into what fits `model` and a report of what does not."""
    own = model.state_dict()
    report = LoadReport()
    fitting = {}
    for key, value in state.items():
        if key not in own:
            if not key.endswith("num_batches_tracked"):  # frozen BN keeps no counter
                report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            fitting[key] = value
    report.missing = [k for k in own if k not in state]
    return fitting, report


def load_weights(
    model: nn.Module, ckpt: dict[str, Any], *, layout: str, strict: bool = True
) -> LoadReport:
    """Load checkpoint weights into `model`.

    strict: any missing, unexpected or reshaped tensor is a UserError listing them.
    Not strict (fine-tuning): everything that fits is loaded; the report says what was skipped.
    """
    state = internal_state_dict(ckpt, layout)
    fitting, report = compare_state_dicts(model, state)
    if strict and not report.clean:
        raise UserError(
            f"checkpoint does not match the model config: {report.describe()}; "
            "pick the config this checkpoint was trained with (--config)"
        )
    model.load_state_dict(fitting, strict=False)
    return report


# --------------------------------------------------------------------------- writing


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save that never leaves a half-written file: temporary name, fsync, rename."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(Path(path), buffer.getbuffer())


def make_checkpoint(
    model: nn.Module,
    *,
    config: dict[str, Any],
    class_names: list[str],
    category_ids: list[int],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Our checkpoint: weights plus everything needed to rebuild and label the model."""
    module = getattr(model, "module", model)
    return {
        FORMAT_TAG: FORMAT_VERSION,
        "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "config": config,
        "class_names": list(class_names),
        "category_ids": [int(c) for c in category_ids],
        **(extra or {}),
    }
