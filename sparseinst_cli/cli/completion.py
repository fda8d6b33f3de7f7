"""Shell completion scripts, each written by its own shell's generator.

Typer's `--show-completion SHELL` prints the script of the shell it detects, whatever SHELL
says, so the files in `completions/` come from here instead:
    python -m sparseinst_cli.cli.completion completions/
"""

from __future__ import annotations

import sys
from pathlib import Path

from typer._completion_shared import get_completion_script

PROG = "sparseinst"
COMPLETE_VAR = "_SPARSEINST_COMPLETE"  # what click reads for the `sparseinst` entry point
SHELL_FILES = {"bash": "bash", "zsh": "zsh", "fish": "fish", "powershell": "ps1"}


def completion_script(shell: str) -> str:
    """The completion script of `shell` (bash, zsh, fish or powershell) for `sparseinst`."""
    return get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=shell)


def write_completions(folder: Path) -> list[Path]:
    """Write `sparseinst.<ext>` for every shell into `folder`; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shell, ext in SHELL_FILES.items():
        path = folder / f"{PROG}.{ext}"
        path.write_text(completion_script(shell))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_completions(Path(sys.argv[1] if len(sys.argv) > 1 else "completions")):
        print(written)
