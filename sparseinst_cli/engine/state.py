"""Everything `--resume` needs, in `last.pth`: weights, optimizer, lr schedule, grad scaler,
iteration, RNG states of every process. Written atomically by rank 0; loads with
`weights_only=True` (numpy RNG state is stored as a tensor for that reason)."""
from __future__ import annotations

import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from ..checkpoint import atomic_save, make_checkpoint, read_checkpoint
from ..config import Config

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


@contextmanager
def signals_ignored() -> Iterator[None]:
    """SIGINT and SIGTERM ignored meanwhile. Processes started inside (data loader workers)
    keep ignoring them, so Ctrl-C stops the training loop cleanly instead of its workers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class StopSignals:
    """Turns the first Ctrl-C / SIGTERM into a request to stop after the current iteration.

    A second Ctrl-C interrupts at once. Outside the main thread signals cannot be caught and
    this does nothing.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()
