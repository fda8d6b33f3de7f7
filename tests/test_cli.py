"""The CLI as a whole: help text everywhere, version, completions, the single error handler."""

from __future__ import annotations

import subprocess
from pathlib import Path

import click
import pytest
import typer
from cli_support import CLI

from sparseinst_cli import __version__
from sparseinst_cli.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
SHELLS = {"bash": "bash", "zsh": "zsh", "fish": "fish", "powershell": "ps1"}


def _walk(command: click.Command, path: str = "sparseinst"):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _walk(sub, f"{path} {name}")


def test_every_command_and_option_has_help():
    missing = []
    for path, command in _walk(typer.main.get_command(app)):
        if not (command.help or "").strip():
            missing.append(path)
        for param in command.params:
            if param.name in ("help", "install_completion", "show_completion"):
                continue
            if not (getattr(param, "help", None) or "").strip():
                missing.append(f"{path} {param.opts[0] if param.opts else param.name}")
    assert not missing, f"without help text: {missing}"


def test_commands_are_present():
    names = set(typer.main.get_command(app).commands)
    assert {"predict"} <= names


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_completion_scripts_are_current(shell):
    fresh = subprocess.run(
        [*CLI, "--show-completion", shell], capture_output=True, text=True, check=True
    )
    stored = (ROOT / "completions" / f"sparseinst.{SHELLS[shell]}").read_text()
    assert fresh.stdout == stored, "completions are stale: run `make completions`"


def test_bash_completion_registers():
    script = ROOT / "completions" / "sparseinst.bash"
    out = subprocess.run(
        ["bash", "-c", f"source {script}; complete -p sparseinst"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "sparseinst" in out.stdout


def test_version():
    out = subprocess.run([*CLI, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"sparseinst {__version__}"


def test_unknown_command_and_option_are_one_line_usage_errors():
    for args in (["frobnicate"], ["predict", "x.jpg", "--nope"]):
        out = subprocess.run([*CLI, *args], capture_output=True, text=True)
        assert out.returncode == 2
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
