"""Run folders: `runs/train/<name>` with `exp`, `exp2`, ... when the name is taken."""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import UserError

CONFIG_FILE = "config.yaml"
LAST = "last.pth"
BEST = "best.pth"
METRICS = "metrics.jsonl"
PLOT = "metrics.png"


def new_run_dir(project: Path, name: str, *, exist_ok: bool = False) -> Path:
    """Create and return `project/name`, or `project/name2`, `name3`, ... if it exists.

    With `exist_ok` an existing folder is reused as it is (its files are overwritten).
    """
    if not name or Path(name).name != name or name in (".", ".."):
        raise UserError(f"--name {name!r} must be a plain folder name, e.g. --name exp")
    path = project / name
    if not exist_ok:
        stem = re.sub(r"\d+$", "", name) or name
        index = 2
        while path.exists():
            path = project / f"{stem}{index}"
            index += 1
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create run folder {path} ({exc.strerror}); choose another --project"
        ) from None
    return path


def resume_dir(project: Path, name: str | None) -> Path:
    """The run to continue: `project/name`, or the most recently written run with a last.pth."""
    if name is not None:
        path = project / name
        if not (path / LAST).is_file():
            raise UserError(
                f"cannot resume: {path / LAST} does not exist; check --name and --project"
            )
        return path
    runs = sorted(project.glob(f"*/{LAST}"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise UserError(f"cannot resume: no run with a {LAST} under {project}; train first")
    return runs[-1].parent


def remove_partial_writes(run: Path) -> None:
    """Delete temporary files a killed process left behind while writing a checkpoint."""
    for tmp in run.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
