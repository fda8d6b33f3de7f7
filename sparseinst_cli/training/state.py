"""The checkpoints a training run writes: `last.pth` to resume, `best.pth` to use.

`last.pth` holds everything `--resume` needs: weights, optimizer, lr schedule, grad scaler,
iteration, RNG states of every process. Written atomically by rank 0; loads with
`weights_only=True` (numpy RNG state is stored as a tensor for that reason)."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..loading.checkpoint import atomic_save, make_checkpoint, read_checkpoint

TRAIN_STATE = "train_state"


def capture_rng() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and Python RNG states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((
        "MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
        np_state["has_gauss"], np_state["cached"],
    ))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@dataclass
class Labels:
    """The dataset's class names and category ids (contiguous label k <-> category_ids[k])."""

    class_names: list[str]
    category_ids: list[int]


def save_train_state(
    path: Path, *, model: torch.nn.Module, cfg: Config, labels: Labels, train_state: dict[str, Any]
) -> None:
    """Write a resumable checkpoint atomically (temporary file, fsync, rename)."""
    ckpt = make_checkpoint(
        model, config=cfg.to_dict(), class_names=labels.class_names,
        category_ids=labels.category_ids,
        extra={"iteration": int(train_state["iteration"]), TRAIN_STATE: train_state},
    )
    atomic_save(ckpt, path)


def save_weights(
    path: Path, *, model: torch.nn.Module, cfg: Config, labels: Labels, extra: dict[str, Any]
) -> None:
    """An inference checkpoint (no optimizer): best.pth."""
    ckpt = make_checkpoint(
        model, config=cfg.to_dict(), class_names=labels.class_names,
        category_ids=labels.category_ids, extra=extra,
    )
    atomic_save(ckpt, path)


def read_train_state(path: Path) -> dict[str, Any]:
    """A checkpoint written by `save_train_state`, with its TRAIN_STATE entry."""
    ckpt = read_checkpoint(path)
    if TRAIN_STATE not in ckpt:
        from ..errors import UserError

        raise UserError(f"{path} holds weights only, not a training state; it cannot be resumed")
    return ckpt
