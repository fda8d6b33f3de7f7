"""Shared Rich consoles and the process-wide --quiet / --debug state."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console

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
