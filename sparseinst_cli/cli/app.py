"""`sparseinst`: the Typer app, global options and the single error handler. The console entry
point (cli/entry.py) chooses the OpenMP spin count before importing this module."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from .. import __version__
from ..errors import RunError, UserError
from .console import err_console, state

app = typer.Typer(
    name="sparseinst",
    help="Real-time instance segmentation with SparseInst: train, eval, bench, predict, export.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sparseinst {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = None,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="Show full tracebacks on errors, e.g. sparseinst --debug eval ..."
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print results only, no progress.")
    ] = False,
) -> None:
    """SparseInst from one command line. Example: sparseinst predict images/ --weights model.pth"""
    state.debug = debug
    state.quiet = quiet


def _register() -> None:
    """Each command lives in its own module; importing it here keeps app startup explicit."""
    from . import bench, evaluate, predict

    app.command("predict")(predict.predict)
    app.command("bench")(bench.bench)
    app.command("eval")(evaluate.evaluate)
    from . import export

    app.command("export")(export.export)
    from . import train

    app.command("train")(train.train)
    from . import data

    app.add_typer(data.app, name="data")


_register()


def _fail(message: str, code: int) -> None:
    # Escaped: a message may quote brackets ("pip install 'pkg[extra]'"), not markup.
    message = escape(_worker_cause(message))
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _worker_cause(message: str) -> str:
    """torch's DataLoader re-raises a worker's exception with the worker's traceback in its
    message ("Caught UserError in DataLoader worker process 0. Original Traceback ..."); its
    last line, "module.Class: text", holds the original message."""
    if "\nOriginal Traceback" not in message:
        return message
    last = message.strip().splitlines()[-1]
    return last.split(": ", 1)[-1]


def main() -> None:
    """Run the app (entry.main calls it): one line and an exit status for every failure;
    tracebacks on --debug."""
    state.debug = "--debug" in sys.argv
    try:
        code = app(prog_name="sparseinst", standalone_mode=False)  # typer.Exit(n) returns n here
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as exc:
        if state.debug:
            raise
        _fail(str(exc), 2)
    except RunError as exc:
        if state.debug:
            raise
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:  # noqa: BLE001 - the one place that turns crashes into a message
        if state.debug:
            raise
        _fail(_describe(exc), 1)


def _describe(exc: Exception) -> str:
    # Typer vendors click, so its exceptions are recognised by shape rather than by class.
    if isinstance(exc, typer.Exit):
        sys.exit(exc.exit_code)
    if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # usage errors
        _fail(exc.format_message(), exc.exit_code)
    if isinstance(exc, typer.Abort):
        return "aborted"
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text:
        return "out of memory; try a smaller --batch or --size (or fewer --workers)"
    if isinstance(exc, OSError) and exc.errno == 28:
        return f"no space left on device while writing {exc.filename or 'output'}; free disk space"
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else ''} (run with --debug for the traceback)"
