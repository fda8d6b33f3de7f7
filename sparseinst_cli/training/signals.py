"""Ctrl-C and SIGTERM during training: a request to stop after the current iteration.

The loop runs inside `StopSignals`; data loader workers start inside `signals_ignored`, so a
Ctrl-C reaches the loop only and training stops cleanly with a resumable last.pth. Commands
that clean up on Ctrl-C (`predict`) run inside `sigterm_as_ctrl_c`, so a SIGTERM from a job
scheduler or `timeout` cleans up the same way instead of killing them mid-write.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any


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


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread meanwhile, as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


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
