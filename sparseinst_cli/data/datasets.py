"""Resolve a `--data` argument (DATA.yaml, built-in COCO 2017, `demo`, `crowded`, `rods`) to splits.

A DATA.yaml names each split's image folder and COCO JSON, relative to the YAML's folder:

    train: {images: images/train, annotations: annotations/train.json}
    val: {images: images/val, annotations: annotations/val.json}
    names: [person, car]   # optional, overrides the category names

Built-in names live under $SPARSEINST_DATASETS (default ./datasets), detectron2 layout:
`coco/{train2017,val2017}` and `coco/annotations/instances_{train,val}2017.json`.
`coco_2017_train`, `coco_2017_val` and `coco_2017` all name that dataset; the split argument
picks the files. `demo` (coloured shapes), `crowded` (crowded small nuclei) and `rods` (rod-shaped
cells in colonies) are synthetic datasets, generated on first use in $SPARSEINST_DATASETS/<name>.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from sparseinst_cli.data.synthetic import (
    make_crowded_dataset,
    make_demo_dataset,
    make_rods_dataset,
)
from sparseinst_cli.errors import UserError

DATASETS_ENV = "SPARSEINST_DATASETS"
COCO_NAMES = ("coco_2017", "coco_2017_train", "coco_2017_val")
SYNTHETIC_NAMES = ("demo", "crowded", "rods")
BUILTIN_NAMES = (*COCO_NAMES, *SYNTHETIC_NAMES)


@dataclass(frozen=True)
class SplitSpec:
    """Where one split lives. `names` optionally overrides the category names."""

    images: Path
    annotations: Path
    name: str
    names: tuple[str, ...] | None = None


def datasets_root() -> Path:
    """Folder of the built-in datasets: $SPARSEINST_DATASETS or ./datasets."""
    return Path(os.environ.get(DATASETS_ENV) or "datasets")


def resolve_split(data: str, split: str) -> SplitSpec:
    """Files of `split` (e.g. "train", "val") of the dataset named by `data`."""
    if data in SYNTHETIC_NAMES:
        make = {"demo": make_demo_dataset, "crowded": make_crowded_dataset,
                "rods": make_rods_dataset}[data]
        return _from_yaml(make(datasets_root() / data), split, label=data)
    if data in COCO_NAMES:
        return _coco_2017(split)
    path = Path(data)
    if path.is_dir() and (path / "data.yaml").is_file():
        path = path / "data.yaml"
    if not path.is_file():
        raise UserError(
            f"--data {data!r} is neither a file nor a built-in dataset; give a DATA.yaml path "
            f"or one of {', '.join(BUILTIN_NAMES)}"
        )
    return _from_yaml(path, split, label=path.parent.name if path.stem == "data" else path.stem)


def _coco_2017(split: str) -> SplitSpec:
    if split not in ("train", "val"):
        raise UserError(f"COCO 2017 has no split {split!r}; use train or val")
    coco = datasets_root() / "coco"
    spec = SplitSpec(
        images=coco / f"{split}2017",
        annotations=coco / "annotations" / f"instances_{split}2017.json",
        name=f"coco_2017_{split}",
    )
    for p in (spec.annotations, spec.images):
        if not p.exists():
            raise UserError(
                f"COCO 2017 {split} not found: {p} is missing; put COCO under "
                f"{coco} or set {DATASETS_ENV} to the folder that holds coco/"
            )
    return spec


def _from_yaml(path: Path, split: str, *, label: str) -> SplitSpec:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path} is not valid YAML ({first}); fix the file") from e
    if not isinstance(data, dict):
        raise UserError(f"{path} must be a mapping with train/val entries; see DATA.yaml format")
    if split not in data:
        found = [k for k, v in data.items() if isinstance(v, dict)]
        raise UserError(
            f"{path} has no {split!r} split (found: {', '.join(found) or 'none'}); "
            f"add '{split}: {{images: ..., annotations: ...}}'"
        )
    entry = data[split]
    if not isinstance(entry, dict) or not {"images", "annotations"} <= set(entry):
        raise UserError(f"{path}: split {split!r} needs both 'images' and 'annotations' keys")
    base = path.parent
    spec = SplitSpec(
        images=base / str(entry["images"]),
        annotations=base / str(entry["annotations"]),
        name=f"{label}/{split}",
        names=_names(data.get("names"), path),
    )
    if not spec.annotations.is_file():
        raise UserError(f"{path}: annotations of {split!r} not found: {spec.annotations}")
    if not spec.images.is_dir():
        raise UserError(f"{path}: image folder of {split!r} not found: {spec.images}")
    return spec


def _names(names: object, path: Path) -> tuple[str, ...] | None:
    if names is None:
        return None
    if isinstance(names, dict):  # {0: a, 1: b} style
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
        raise UserError(f"{path}: 'names' must be a list of class names")
    return tuple(str(n) for n in names)
