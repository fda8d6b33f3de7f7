"""`--fix`: apply a check's repair plan to a copy of the COCO JSON, never to the original."""

from __future__ import annotations

from pathlib import Path

from sparseinst_cli.data.check import FixPlan
from sparseinst_cli.errors import UserError
from sparseinst_cli.fileio import atomic_write_json


def default_fixed_path(annotations: Path) -> Path:
    """`train.json` -> `train.fixed.json` beside it."""
    return annotations.with_name(f"{annotations.stem}.fixed.json")


def fixed_coco(data: dict, plan: FixPlan) -> dict:
    """A cleaned copy of a raw COCO dict (the input is not modified): entries dropped and
    fields replaced by list index, every other key kept as it was."""
    out = dict(data)
    out["images"] = [
        {**img, **plan.image_updates.get(i, {})}
        for i, img in enumerate(data["images"]) if i not in plan.drop_images
    ]
    out["categories"] = [c for i, c in enumerate(data["categories"])
                         if i not in plan.drop_categories]
    out["annotations"] = [
        {**ann, **plan.ann_updates.get(i, {})}
        for i, ann in enumerate(data["annotations"]) if i not in plan.drop_annotations
    ]
    return out


def write_fixed(data: dict, plan: FixPlan, *, original: Path, out: Path | None = None) -> Path:
    """Write the cleaned copy of `data` (read from `original`) atomically to `out`
    (default: `<original>.fixed.json`); refuses to overwrite `original`."""
    out = out or default_fixed_path(original)
    if out.resolve() == original.resolve():
        raise UserError(f"--out {out} is the checked file itself; give another path")
    atomic_write_json(out, fixed_coco(data, plan))
    return out
