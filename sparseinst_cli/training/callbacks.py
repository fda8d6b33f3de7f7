"""How training talks to the outside: a callbacks object (no-ops here; the CLI draws with Rich).

Only the main process (rank 0) gets callbacks. With `--gpus N` the processes are spawned, so
training receives a picklable *factory* that builds the callbacks inside rank 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass
class RunInfo:
    """What a run is about to do, for the header the CLI prints."""

    run_dir: Path
    start_iter: int
    max_iter: int | None  # None until a --time budget has been measured
    world_size: int
    device: str
    batch_size: int  # global
    num_classes: int
    train_images: int
    val_images: int | None
    amp: str


@dataclass
class TrainSummary:
    """The outcome of `run_training`."""

    run_dir: Path
    status: str  # finished | interrupted
    iteration: int
    max_iter: int
    metrics: dict[str, Any] = field(default_factory=dict)  # last evaluation (0-100), if any
    best_ap: float | None = None
    last: Path | None = None
    best: Path | None = None
    signal: str | None = None  # SIGINT / SIGTERM when interrupted by one


class TrainCallbacks:
    """Override what you need; every hook is optional."""

    def on_notice(self, message: str) -> None:
        """A one-line message for the user (class count overridden, rollback, ...)."""

    def on_skipped_weights(self, source: str, rows: list[tuple[str, str]]) -> None:
        """Tensors of a starting checkpoint that were not loaded: (name, reason)."""

    def on_start(self, info: RunInfo) -> None:
        """Before the first iteration."""

    def on_schedule(self, max_iter: int, description: str) -> None:
        """The iteration count is known (at once with --iters, after measuring with --time)."""

    def on_iteration(
        self, iteration: int, max_iter: int | None, losses: dict[str, float], lr: float
    ) -> None:
        """After each iteration; `iteration` counts the iterations done."""

    def on_eval_start(self, iteration: int, total: int) -> None:
        """Before evaluating `total` images on this process."""

    def on_eval_progress(self, done: int, total: int) -> None:
        """Images done during an evaluation."""

    def on_eval(self, iteration: int, metrics: dict[str, Any], best: bool) -> None:
        """The metrics of an evaluation; `best` if it gave a new best.pth."""

    def on_end(self, summary: TrainSummary) -> None:
        """After the last checkpoint was written."""


class CallbacksFactory(Protocol):
    def __call__(self) -> TrainCallbacks: ...


def no_callbacks() -> TrainCallbacks:
    return TrainCallbacks()
