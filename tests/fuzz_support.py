"""Corrupted COCO files for the fuzz test, and the worker that loads them under a memory limit.

`corrupt` applies 1-3 seeded mutations to a small valid COCO dict: deleted fields, swapped
types, non-finite and huge numbers, broken RLE, duplicate ids, degenerate polygons. The worker
(`python fuzz_support.py DIR LIMIT_MB`) caps its address space, then runs every case through
the loader, a few training samples, `data check` and now and then the training preflight,
printing one JSON line per case: {"case", "outcome": ok | error | crash, "message"}.
"""
from __future__ import annotations

import copy
import json
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

H, W = 24, 32
ODD_VALUES = (None, True, "7", "", [], {}, [1, 2], {"a": 1}, -1, 0, 0.5, float("nan"),
              float("inf"), -float("inf"), 1e308, -1e9, 2**63, 10**30, 65536, 100_000)


def base_coco() -> dict:
    """Three 32x24 images: polygons (one with two parts), a compressed RLE, a crowd RLE."""
    mask = np.zeros((H, W), np.uint8, order="F")
    mask[4:12, 6:20] = 1
    rle = mask_util.encode(mask)
    flat = mask.ravel(order="F")
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 80.0,
         "bbox": [2, 2, 10, 8], "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10]]},
        {"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 0,
         "segmentation": [[14, 4, 30, 4, 30, 20], [1, 14, 8, 14, 8, 22, 1, 22]]},
        {"id": 3, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 112.0,
         "segmentation": {"size": [H, W], "counts": rle["counts"].decode("ascii")}},
        {"id": 4, "image_id": 2, "category_id": 2, "iscrowd": 1, "area": 112.0,
         "segmentation": {"size": [H, W], "counts": runs}},
        {"id": 5, "image_id": 3, "category_id": 2, "iscrowd": 0, "area": 40.0,
         "segmentation": [[20, 10, 28, 10, 28, 15, 20, 15]]},
    ]
    images = [{"id": i, "file_name": f"{i}.png", "height": H, "width": W} for i in (1, 2, 3)]
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"images": images, "annotations": anns, "categories": cats}


def write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in (1, 2, 3):
        Image.fromarray(np.full((H, W, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")


def _entry(data: dict, rng: random.Random) -> dict | None:
    key = rng.choice(("images", "annotations", "annotations", "categories"))
    items = [e for e in data.get(key, []) if isinstance(e, dict)] if isinstance(
        data.get(key), list) else []
    return rng.choice(items) if items else None


def _number_slot(data: dict, rng: random.Random) -> tuple[object, object] | None:
    """(container, key or index) of some number in the file."""
    entry = _entry(data, rng)
    if entry is None:
        return None
    segm = entry.get("segmentation")
    if isinstance(segm, list) and segm and isinstance(segm[0], list) and segm[0]:
        part = rng.choice([p for p in segm if isinstance(p, list) and p] or [segm[0]])
        return part, rng.randrange(len(part))
    if isinstance(segm, dict) and isinstance(segm.get("size"), list) and segm["size"]:
        return segm["size"], rng.randrange(len(segm["size"]))
    keys = [k for k, v in entry.items() if isinstance(v, (int, float))]
    return (entry, rng.choice(keys)) if keys else None


def _mutate(data: dict, rng: random.Random) -> None:
    kind = rng.randrange(8)
    entry = _entry(data, rng)
    if kind == 0 and entry:  # delete a field
        entry.pop(rng.choice(list(entry)), None)
    elif kind == 1 and entry:  # swap a field's type
        entry[rng.choice(list(entry))] = copy.deepcopy(rng.choice(ODD_VALUES))
    elif kind in (2, 3):  # a non-finite or huge number
        slot = _number_slot(data, rng)
        if slot is not None:
            slot[0][slot[1]] = rng.choice(ODD_VALUES[9:])
    elif kind == 4 and entry is not None and "segmentation" in entry:  # broken RLE
        entry["segmentation"] = rng.choice([
            {"size": [H, W], "counts": [100, 50, 30]},
            {"size": [H, W], "counts": [10_000, 5_000]},
            {"size": [H, W], "counts": [-5, H * W + 5]},
            {"size": [H, W], "counts": "PPYo0\x7f\u00e9"},
            {"size": [H, W], "counts": "0" * rng.randrange(1, 40)},
            {"size": [10**6, 10**6], "counts": [10**12]},
            {"size": [H * 100, W * 100], "counts": [H * W * 10**4]},
            {"size": [H, W]},
            {"counts": [H * W]},
            {"size": [H, W], "counts": [H * W - 3, 3.0]},
        ])
    elif kind == 5:  # duplicate id
        key = rng.choice(("images", "annotations", "categories"))
        items = [e for e in data.get(key, []) if isinstance(e, dict)]
        if len(items) >= 2:
            a, b = rng.sample(items, 2)
            b["id"] = a.get("id")
    elif kind == 6 and entry is not None and "segmentation" in entry:  # odd polygons
        entry["segmentation"] = rng.choice([
            [[1, 2, 3, 4], [2, 2, 12, 2, 12, 10, 2, 10]], [[5, 5, 5, 5, 5, 5]], [],
            [[2, 2, 12, 2, 12, 10]] + [[1, 1]], [[-10, -10, 60, -10, 60, 50, -10, 50]],
            [[100, 100, 110, 100, 110, 110]], [[1e9, 1, 2, 3, 4, 5]], [1, 2, 3, 4, 5, 6],
            [[2, 2, 12, 2, 12]], [["1", "2", "3", "4", "5", "6"]], [[[1, 2], [3, 4], [5, 6]]],
        ])
    elif kind == 7:  # a top-level key
        key = rng.choice(("images", "annotations", "categories"))
        if rng.random() < 0.5:
            data.pop(key, None)
        else:
            data[key] = copy.deepcopy(rng.choice(ODD_VALUES))


def corrupt(seed: int) -> dict:
    """The base file with 1-3 seeded mutations (seed 0: the base file untouched)."""
    rng = random.Random(seed)
    data = base_coco()
    for _ in range(0 if seed == 0 else rng.randint(1, 3)):
        _mutate(data, rng)
    return data


def _one_line(message: str) -> bool:
    return bool(message) and "\n" not in message and "Traceback" not in message


def run_case(path: Path, images: Path, preflight: bool) -> dict:
    """Loader, training samples, data check (and the preflight): outcome of one case."""
    from typer.testing import CliRunner

    from sparseinst_cli.cli.app import app
    from sparseinst_cli.data.check import check_dataset
    from sparseinst_cli.data.coco import CocoInstances, CocoTrainDataset
    from sparseinst_cli.data.datasets import SplitSpec
    from sparseinst_cli.data.fix import fixed_coco
    from sparseinst_cli.data.transforms import TransformConfig
    from sparseinst_cli.data.validate import load_raw_coco, validate_coco
    from sparseinst_cli.errors import UserError
    from sparseinst_cli.training.plan import read_classes

    outcomes = []
    try:
        source = CocoInstances(annotations=path, images=images, filter_empty=True)
        dataset = CocoTrainDataset(source, transform=TransformConfig(min_sizes=(H,),
                                                                     max_size=64))
        for i in range(len(dataset)):
            dataset[i]
        outcomes.append("ok")
    except UserError as e:
        if not _one_line(str(e)):
            return {"outcome": "crash", "message": f"loader: not one line: {e}"}
        outcomes.append("error")
    try:
        report = check_dataset(path, images, workers=1)
    except UserError as e:
        if not _one_line(str(e)):
            return {"outcome": "crash", "message": f"check: not one line: {e}"}
    else:  # what `data check --fix` writes must load
        try:
            validate_coco(fixed_coco(load_raw_coco(path), report.plan), path)
        except UserError as e:
            return {"outcome": "crash", "message": f"the --fix copy does not load: {e}"}
    if preflight:
        try:
            read_classes(SplitSpec(name="train", annotations=path, images=images), None, True)
        except UserError as e:
            if not _one_line(str(e)):
                return {"outcome": "crash", "message": f"preflight: not one line: {e}"}
        result = CliRunner().invoke(app, ["data", "check", "--data", str(path.with_suffix(
            ".yaml"))])
        if result.exit_code not in (0, 1, 2) or "Traceback" in result.output:
            return {"outcome": "crash", "message": f"cli exit {result.exit_code}: "
                                                   f"{result.output[-300:]}"}
    return {"outcome": outcomes[0], "message": ""}


def main(folder: Path, limit_mb: int) -> None:
    import resource
    import traceback

    import torch

    torch.set_num_threads(1)
    from sparseinst_cli.cli.app import app  # noqa: F401  (imported before the cap)
    from sparseinst_cli.training import plan  # noqa: F401

    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize")) // 1024
    cap = (vm + limit_mb) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    images = folder / "images"
    for path in sorted(folder.glob("case_*.json"), key=lambda p: int(p.stem[5:])):
        seed = int(path.stem[5:])
        try:
            record = run_case(path, images, preflight=seed % 10 == 0)
        except BaseException as e:  # noqa: BLE001  (any escape is the failure we look for)
            record = {"outcome": "crash", "message": "".join(
                traceback.format_exception(type(e), e, e.__traceback__))[-1500:]}
        print(json.dumps({"case": seed, **record}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
