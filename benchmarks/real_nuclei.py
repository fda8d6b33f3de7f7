"""A small REAL nuclei dataset in our format, from the labelled image that ships inside the
`stardist` wheel on PyPI: `stardist/data/images/img2d.tif` (512 x 512 fluorescence nuclei,
16-bit, from the 2018 Kaggle Data Science Bowl, Caicedo et al., Nature Methods 2019) and
`stardist/data/images/mask2d.tif` (its instance labels, 125 nuclei), the files behind
`stardist.data.test_image_nuclei_2d(return_mask=True)`. Nothing is installed: the two TIFFs
are read from the wheel (a zip) or from a folder.

    pip download --no-deps stardist -d /tmp/sd
    python benchmarks/real_nuclei.py --source /tmp/sd/stardist-*.whl --out datasets/real_nuclei
    sparseinst train --config demo --data datasets/real_nuclei/data.yaml --time 15

The image is split into a left half (train) and a right half (val), so no pixel is in both;
nuclei on the middle line appear cut in both. Each half is tiled into --crop px squares:
train crops overlap by half a crop (more views of few nuclei), val crops do not overlap. With
the defaults (256 px): 3 train and 2 val images of about 30 nuclei each. Intensities are
scaled to 8 bits (0.5th-99.8th percentile of the whole image) and saved as grey JPEGs; masks
are each nucleus' pixels inside the crop, pieces under 20 px (cut by the crop) dropped.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from sparseinst_cli.data.synthetic import RenderedObject, Renderer, write_dataset  # noqa: E402

IMAGE, MASK = "stardist/data/images/img2d.tif", "stardist/data/images/mask2d.tif"
CATEGORY = {"id": 1, "name": "nucleus", "supercategory": "cell"}
MIN_PIXELS = 20
VERSION = 1


def read_source(source: Path) -> tuple[bytes, bytes]:
    """The bytes of the image and mask TIFFs from a stardist wheel (zip) or a folder that holds
    img2d.tif and mask2d.tif (e.g. an installed stardist/data/images)."""
    if source.is_dir():
        return (source / Path(IMAGE).name).read_bytes(), (source / Path(MASK).name).read_bytes()
    with zipfile.ZipFile(source) as wheel:
        return wheel.read(IMAGE), wheel.read(MASK)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Percentile-scaled grey uint8 [H, W] of a 16-bit (or any) single-channel image."""
    lo, hi = np.percentile(image, [0.5, 99.8])
    return np.clip(np.rint((image - lo) / max(hi - lo, 1e-6) * 255), 0, 255).astype(np.uint8)


def crop_origins(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of crops of `crop` px every `stride` px covering [0, size)."""
    if size <= crop:
        return [0]
    starts = list(range(0, size - crop + 1, stride))
    return starts if starts[-1] == size - crop else [*starts, size - crop]


def crops(image: np.ndarray, labels: np.ndarray, x0: int, x1: int, crop: int, stride: int
          ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, labels) crops [crop, crop] of the column band [x0, x1), row-major."""
    h = image.shape[0]
    out = []
    for y in crop_origins(h, crop, stride):
        for x in crop_origins(x1 - x0, min(crop, x1 - x0), stride):
            box = (slice(y, y + crop), slice(x0 + x, x0 + x + crop))
            out.append((image[box], labels[box]))
    return out


def objects_of(labels: np.ndarray) -> list[RenderedObject]:
    """One object per label with at least MIN_PIXELS pixels in the crop, in label order."""
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    return [(CATEGORY["id"], labels == i, None) for i, n in zip(ids, counts) if n >= MIN_PIXELS]


def make_real_nuclei(source: Path, out: Path, *, crop: int = 256) -> Path:
    """Write (or reuse) the dataset under `out`; returns its data.yaml."""
    image_bytes, mask_bytes = read_source(source)
    image = np.asarray(Image.open(io.BytesIO(image_bytes))).astype(np.float64)
    labels = np.asarray(Image.open(io.BytesIO(mask_bytes))).astype(np.int64)
    if image.shape != labels.shape or image.ndim != 2:
        raise SystemExit(f"{source}: image {image.shape} and mask {labels.shape} do not match")
    grey, half = to_uint8(image), image.shape[1] // 2
    split_crops = {
        "train": crops(grey, labels, 0, half, crop, crop // 2),
        "val": crops(grey, labels, half, image.shape[1], crop, crop),
    }

    def renderer(items: list[tuple[np.ndarray, np.ndarray]]) -> Renderer:
        return lambda i: (items[i][0], objects_of(items[i][1]))

    digest = hashlib.sha256(image_bytes + mask_bytes).hexdigest()
    return write_dataset(
        out, marker="real_nuclei.json", categories=[dict(CATEGORY)],
        params={"source_sha256": digest, "crop": crop, "version": VERSION},
        splits={s: (len(c), renderer(c)) for s, c in split_crops.items()},
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True,
                        help="a stardist wheel (.whl) or a folder with img2d.tif and mask2d.tif")
    parser.add_argument("--out", type=Path, default=Path("datasets/real_nuclei"))
    parser.add_argument("--crop", type=int, default=256, help="crop side, px")
    args = parser.parse_args(argv)
    data_yaml = make_real_nuclei(args.source, args.out, crop=args.crop)
    print(f"wrote {data_yaml}")


if __name__ == "__main__":
    main()
