"""Three stages that run at once: read -> compute -> write, in order, with bounded queues.

`predict` reads and decodes the next pictures and draws, encodes and writes the last ones while
the model runs on the current ones (decoding, cv2 and torch all release the GIL), so a folder or
a video goes at nearly the model's own speed instead of the sum of the three.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

_END = object()  # closes a queue
_POLL_S = 0.1  # how often a blocked stage checks whether another one failed


class _Stop(Exception):
    """Another stage failed: this one leaves quietly."""


class _Channel:
    """A bounded FIFO queue whose blocking calls give up once `abort` is set."""

    def __init__(self, depth: int, abort: threading.Event):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._abort = abort

    def put(self, item: object) -> None:
        while True:
            if self._abort.is_set():
                raise _Stop
            try:
                self._queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def get(self) -> object:
        while True:
            if self._abort.is_set():
                raise _Stop
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue


def run_stages(
    read: Iterable[In],
    compute: Callable[[In], Out],
    write: Callable[[Out], None],
    *,
    depth: int = 2,
    concurrent: bool = True,
) -> None:
    """`write(compute(x))` for every x of `read`, in order: `read` is iterated on one thread,
    `write` called on another, `compute` on the caller's (where CUDA and torch threads live).

    At most `depth` items wait between two stages, so memory stays bounded on a long video.
    The first exception of any stage (Ctrl-C included) is raised here once every thread has
    finished, nothing keeps running behind the caller's back, and what was already computed is
    still written unless writing is what failed: an interrupted run keeps its finished work.
    concurrent=False runs the three one after another on the caller's thread (for comparison
    and debugging).
    """
    if not concurrent:
        for item in read:
            write(compute(item))
        return
    stop_reading, stop_writing = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    inbox, outbox = _Channel(depth, stop_reading), _Channel(depth, stop_writing)

    def reader() -> None:
        try:
            try:
                for item in read:
                    inbox.put(item)
            except _Stop:
                return
            except BaseException as exc:  # noqa: BLE001 - raised on the caller's thread
                errors.append(exc)  # what was read before still goes through
            inbox.put(_END)
        except _Stop:
            pass

    def writer() -> None:
        try:
            while (item := outbox.get()) is not _END:
                write(item)
        except _Stop:
            pass
        except BaseException as exc:  # noqa: BLE001 - raised on the caller's thread
            errors.append(exc)
            stop_writing.set()
            stop_reading.set()

    threads = [threading.Thread(target=reader, name="read", daemon=True),
               threading.Thread(target=writer, name="write", daemon=True)]
    for thread in threads:
        thread.start()
    try:
        try:
            while (item := inbox.get()) is not _END:
                outbox.put(compute(item))
        except _Stop:
            pass
        except BaseException as exc:
            errors.append(exc)
        stop_reading.set()  # no-op after a clean end; else the reader stops at its next item
        outbox.put(_END)  # the writer finishes what it was given
    except _Stop:
        pass  # the writer failed
    finally:
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
