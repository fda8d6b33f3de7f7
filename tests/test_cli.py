"""The CLI as a whole: help text everywhere, version, completions, the single error handler."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer
from cli_support import CLI

from sparseinst_cli import __version__
from sparseinst_cli.cli.app import app
from sparseinst_cli.cli.completion import SHELL_FILES, completion_script

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("shell", sorted(SHELL_FILES))
def test_completion_scripts_are_current(shell):
    stored = (ROOT / "completions" / f"sparseinst.{SHELL_FILES[shell]}").read_text()
    assert completion_script(shell) == stored, "completions are stale: run `make completions`"


@pytest.mark.parametrize(("shell", "mark"), [
    ("bash", r"complete -o \w+ -F _sparseinst_completion sparseinst"),
    ("zsh", r"^#compdef sparseinst$.*^compdef _sparseinst_completion sparseinst$"),
    ("fish", r"^complete (-c|--command) sparseinst "),
    ("powershell", r"Register-ArgumentCompleter -Native -CommandName sparseinst"),
])
def test_each_completion_script_is_written_for_its_shell(shell, mark):
    script = (ROOT / "completions" / f"sparseinst.{SHELL_FILES[shell]}").read_text()
    assert re.search(mark, script, re.MULTILINE | re.DOTALL)
    assert ("COMPREPLY" in script) == (shell == "bash")


def _complete_in(shell: str, line: str) -> list[str]:
    """Candidates that the installed completion script offers for `line` in `shell`."""
    script = ROOT / "completions" / f"sparseinst.{SHELL_FILES[shell]}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    words = line.split()
    if shell == "bash":
        cmd = ["bash", "-c", f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
               "_sparseinst_completion sparseinst; printf '%s\\n' \"${COMPREPLY[@]}\""]
    else:  # fish: the registered completion, asked for the command line
        cmd = ["fish", "-c", f"source {script}; complete -C '{line}'"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    return [w.split()[0] for w in out.stdout.splitlines() if w.strip()]


@pytest.mark.parametrize("shell", ["bash", "fish"])
def test_completion_completes_a_command(shell):
    if shutil.which(shell) is None or shutil.which("sparseinst", path=str(
            Path(sys.executable).parent)) is None:
        pytest.skip(f"{shell} or the sparseinst script is not installed here")
    assert _complete_in(shell, "sparseinst tr") == ["train"]


def test_version():
    out = subprocess.run([*CLI, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"sparseinst {__version__}"


def test_unknown_command_and_option_are_one_line_usage_errors():
    for args in (["frobnicate"], ["predict", "x.jpg", "--nope"]):
        out = subprocess.run([*CLI, *args], capture_output=True, text=True)
        assert out.returncode == 2
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
