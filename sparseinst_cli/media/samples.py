"""Images shipped with the package (COCO val2017 000000006471): benchmark and parity inputs."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

PARITY_IMAGE = "000000006471.jpg"  # 500 x 333, as in the reference case
BENCH_IMAGE = "bench_000000006471_4x3.jpg"  # 444 x 333 crop: 640 -> 640 x 853, as COCO's 4:3


def asset_path(name: str) -> Path:
    return Path(str(resources.files("sparseinst_cli") / "assets" / name))
