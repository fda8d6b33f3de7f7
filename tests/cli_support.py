"""Running the `sparseinst` command in tests: in this process through the real entry point, or
in a fresh process as `python -m sparseinst_cli`."""

from __future__ import annotations

import subprocess
import sys

from sparseinst_cli.cli.app import main

CLI = [sys.executable, "-m", "sparseinst_cli"]


def run_cli(args: list[object], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run `sparseinst ARGS` through the real entry point; returns (status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["sparseinst", *[str(a) for a in args]])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def run_cli_process(
    *args: object, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `sparseinst ARGS` in a fresh process; stdout and stderr captured as text."""
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
