"""Loading a model: weights (+ config) -> `LoadedModel`, the network with its config and labels.

Our .pth checkpoints carry their config and label maps; official SparseInst checkpoints need a
config; exported .onnx files carry theirs in the ONNX metadata and run with onnxruntime.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config, config_with_overrides, load_config
from ..errors import UserError
from ..modeling import SparseInst, build_model
from .checkpoint import is_ours, load_weights, read_checkpoint
from .coco_classes import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from .onnx_backend import OnnxModel, is_onnx_file


@dataclass
class LoadedModel:
    """A model with the config and label maps that came with its weights."""

    model: SparseInst
    config: Config
    class_names: list[str]
    category_ids: list[int]
    source: str = ""
    skipped: list[str] = field(default_factory=list)


def load_model(
    weights: str | os.PathLike | None,
    config: str | os.PathLike | None = None,
    overrides: list[str] = (),
) -> LoadedModel:
    """Rebuild a model from our checkpoint (config inside) or an official one (config needed).

    With `weights=None` the model keeps its initialisation (useful for benchmarks).
    """
    if weights is not None and is_onnx_file(weights):
        return load_onnx_model(weights, config, overrides)
    ckpt = read_checkpoint(weights) if weights is not None else None
    if ckpt is not None and is_ours(ckpt):
        if config is not None:
            cfg = load_config(config, overrides)
        else:
            cfg = config_with_overrides(ckpt["config"], overrides)
        names, ids = list(ckpt["class_names"]), list(ckpt["category_ids"])
    else:
        if config is None:
            raise UserError(
                f"{weights} is an official SparseInst checkpoint, which stores no config; "
                "name its variant with --config (for example --config r50_giam)"
            )
        cfg = load_config(config, overrides)
        names, ids = _default_labels(cfg.model.num_classes)
    model = build_model(cfg.model)
    if ckpt is not None:
        load_weights(model, ckpt, layout=cfg.model.checkpoint_layout, strict=True)
    model.eval()
    return LoadedModel(model, cfg, names, ids, source=str(weights or ""))


def _default_labels(num_classes: int) -> tuple[list[str], list[int]]:
    if num_classes == len(COCO_CLASS_NAMES):
        return list(COCO_CLASS_NAMES), list(COCO_CATEGORY_IDS)
    return [f"class_{i}" for i in range(num_classes)], list(range(1, num_classes + 1))


def load_onnx_model(
    path: str | os.PathLike,
    config: str | os.PathLike | None = None,
    overrides: list[str] = (),
    *,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """An exported .onnx file -> `LoadedModel` whose `model` is an `OnnxModel`.

    The config stored in the metadata gives the test settings (sizes, thresholds); `config`
    replaces it and `overrides` (KEY=VALUE) adjust it, as for our .pth checkpoints.
    """
    if not Path(path).is_file():
        raise UserError(f"ONNX model not found: {path}")
    model = OnnxModel(path, device=device)
    meta = model.metadata
    if config is not None:
        cfg = load_config(config, overrides)
    else:
        stored = json.loads(meta["config"])
        cfg = config_with_overrides(stored, overrides)
    return LoadedModel(
        model=model,  # duck-typed SparseInst: __call__, to, eval, num_classes
        config=cfg,
        class_names=list(json.loads(meta["class_names"])),
        category_ids=[int(c) for c in json.loads(meta["category_ids"])],
        source=str(path),
    )
