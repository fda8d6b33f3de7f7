"""What reaches the terminal: the shared Rich consoles, the process-wide --quiet / --debug
state, and progress of long work: a Rich bar on a terminal; in a log file or a pipe, a plain
line every `plain_every()` seconds (30 by default, SPARSEINST_PROGRESS_EVERY to change it) and
at the end. `train`, `predict`, `eval` and `export` all write their plain lines here."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console()  # results and progress
err_console = Console(stderr=True)  # errors and notices


@dataclass
class CliState:
    debug: bool = False
    quiet: bool = False


state = CliState()


def info(message: str) -> None:
    """A notice for people (stderr), silenced by --quiet."""
    if not state.quiet:
        err_console.print(message, highlight=False)


EVERY_ENV = "SPARSEINST_PROGRESS_EVERY"
DEFAULT_EVERY = 30.0  # seconds between plain lines


def plain_every() -> float:
    """Seconds between plain progress lines: $SPARSEINST_PROGRESS_EVERY, else 30."""
    try:
        return max(0.0, float(os.environ.get(EVERY_ENV, DEFAULT_EVERY)))
    except ValueError:
        return DEFAULT_EVERY


class PlainLines:
    """`label done/total eta m:ss status`: the first line, then at most one per period, and the
    last one."""

    def __init__(self, label: str, *, every: float | None = None, unit: str | None = None):
        self.label, self.unit = label, unit  # unit: also print the rate, e.g. "12.5 img/s"
        self.every = plain_every() if every is None else every
        self.done = 0
        self._last: float | None = None
        self._first: tuple[int, float] | None = None

    def advance(self, n: int, total: int | None) -> None:
        self.update(self.done + n, total)

    def update(self, done: int, total: int | None, status: str = "") -> None:
        self.done = done
        now = time.monotonic()
        if self._first is None:
            self._first = (done, now)
        if self._last is not None and now - self._last < self.every and done != total:
            return
        self._last = now
        start_done, start = self._first
        eta = ""
        if total and done > start_done:
            left = (total - done) * (now - start) / (done - start_done)
            eta = f" eta {int(left // 60)}:{int(left % 60):02d}"
        if self.unit and now > start and done > start_done:
            status = f"{(done - start_done) / (now - start):.1f} {self.unit}/s {status}".strip()
        tail = f" {status}" if status else ""
        console.print(f"{self.label} {done}/{total or '?'}{eta}{tail}", highlight=False,
                      soft_wrap=True)


@contextlib.contextmanager
def progress_bar(
    label: str, total: int, *, quiet: bool = False, unit: str | None = None
) -> Iterator[Callable[[int], None]]:
    """A callback `advance(n)`: a transient Rich bar on a terminal, plain lines otherwise,
    nothing with --quiet; with `unit`, both show the rate (`12.5 img/s`)."""
    if quiet:
        yield lambda n: None
        return
    if not console.is_terminal:
        lines = PlainLines(label, unit=unit)
        yield lambda n: lines.advance(n, total)
        return
    columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(_RateColumn(unit))
    with Progress(*columns, TimeRemainingColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)


class _RateColumn(ProgressColumn):
    """Items per second, e.g. `12.5 img/s`."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} {self.unit}/s" if speed else "", style="progress.data.speed")
