"""COCO-format instance annotations: parsing, training and evaluation datasets."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from sparseinst_cli.data.transforms import Instance, TransformConfig, apply_train_transforms
from sparseinst_cli.data.validate import load_raw_coco, validate_coco
from sparseinst_cli.errors import UserError
from sparseinst_cli.fileio import read_image_rgb

AUG_STREAM = 1  # seed-sequence tag of the per-sample augmentation RNG (see loader.py)


def load_coco_json(path: str | Path) -> COCO:
    """Read and validate a COCO instances JSON into a pycocotools COCO index (quietly)."""
    return load_coco_checked(path)[0]


def load_coco_checked(path: str | Path) -> tuple[COCO, str | None]:
    """(a pycocotools COCO index of the validated, repaired JSON, the repair notice or None).

    Broken data raises UserError (see validate.py); annotations missing `iscrowd` get 0 and
    those missing `area` get their mask area, so COCOeval can use any valid file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"annotation file not found: {path}; check the path in your data YAML")
    data, notice = validate_coco(load_raw_coco(path), path)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, notice


def segmentation_to_instance(segm: list | dict, label: int, h: int, w: int) -> Instance | None:
    """A COCO segmentation (polygons, compressed or uncompressed RLE) -> Instance, None if empty."""
    if isinstance(segm, list):
        polys = [np.asarray(p, np.float64).reshape(-1, 2) for p in segm
                 if len(p) >= 6 and len(p) % 2 == 0]
        for p in polys:  # the memory guard: pycocotools allocates along every edge
            if not (np.isfinite(p).all() and (abs(p) <= 2 * max(h, w)).all()):
                raise UserError(f"a polygon lies outside the {w}x{h} image; validate the data")
        return Instance(label, polygons=polys) if polys else None
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        if list(segm["size"]) != [h, w]:
            raise UserError(f"RLE size {segm['size']} differs from the image size {[h, w]}")
        rle = mask_util.frPyObjects(segm, h, w) if isinstance(segm["counts"], list) else segm
        return Instance(label, mask=mask_util.decode(rle).astype(bool))
    raise UserError(f"unsupported segmentation {segm!r:.60}; use polygons or RLE")


class CocoInstances:
    """A COCO split: category mapping, image list and per-image instances.

    Category ids may be any integers; contiguous id k (0..K-1) is the k-th smallest id.
    With `filter_empty`, images without a non-crowd instance are left out (as detectron2).
    """

    def __init__(
        self, *, annotations: str | Path, images: str | Path, filter_empty: bool = True,
        names: Sequence[str] | None = None,
    ) -> None:
        self.annotations = Path(annotations)
        self.images = Path(images)
        self.coco, self.notice = load_coco_checked(self.annotations)
        cats = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        self.category_ids: list[int] = [int(c["id"]) for c in cats]
        self.class_names: list[str] = [str(c.get("name", c["id"])) for c in cats]
        if names is not None:
            if len(names) != len(cats):
                raise UserError(
                    f"'names' lists {len(names)} classes but {self.annotations} has {len(cats)} "
                    "categories; fix 'names' or remove it"
                )
            self.class_names = [str(n) for n in names]
        self.category_to_contiguous = {c: i for i, c in enumerate(self.category_ids)}
        ids = sorted(self.coco.imgs)
        if filter_empty:
            ids = [i for i in ids if any(not a.get("iscrowd", 0) and a["segmentation"]
                                         for a in self.coco.imgToAnns.get(i, []))]
        self.image_ids: list[int] = ids

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_info(self, image_id: int) -> dict:
        return self.coco.imgs[image_id]

    def image_path(self, image_id: int) -> Path:
        return self.images / self.coco.imgs[image_id]["file_name"]

    def load_image(self, image_id: int) -> np.ndarray:
        """RGB uint8 [H, W, 3]; its size must match the annotation file's height/width."""
        info = self.coco.imgs[image_id]
        image = read_image_rgb(self.image_path(image_id))
        if image.shape[:2] != (info["height"], info["width"]):
            raise UserError(
                f"image {self.image_path(image_id)} is {image.shape[1]}x{image.shape[0]} but "
                f"{self.annotations.name} says {info['width']}x{info['height']}; fix the JSON"
            )
        return image

    def instances(self, image_id: int) -> list[Instance]:
        """Non-crowd instances of an image with contiguous labels, at the original size."""
        info = self.coco.imgs[image_id]
        out = []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0):
                continue
            label = self.category_to_contiguous[ann["category_id"]]
            try:
                inst = segmentation_to_instance(
                    ann["segmentation"], label, info["height"], info["width"]
                )
            except UserError as e:
                raise UserError(f"{self.annotations}: annotation {ann.get('id')}: {e}") from e
            if inst is not None:
                out.append(inst)
        return out


class CocoTrainDataset(Dataset):
    """Augmented training samples: (image uint8 [3, H, W] RGB, target dict).

    target: labels int64 [M] (contiguous), masks bool [M, H, W] at the augmented size,
    image_id int, orig_size (h, w). The key is a dataset index or (index, global sample index);
    the augmentation RNG is seeded by (seed, global sample index), or by the index alone.
    """

    def __init__(self, source: CocoInstances, *, transform: TransformConfig, seed: int = 0):
        self.source = source
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict]:
        index, sample = key if isinstance(key, tuple) else (key, key)
        rng = np.random.default_rng([self.seed, AUG_STREAM, sample])
        image_id = self.source.image_ids[index]
        image = self.source.load_image(image_id)
        orig_size = image.shape[:2]
        image, labels, masks = apply_train_transforms(
            image, self.source.instances(image_id), self.transform, rng
        )
        target = {
            "labels": torch.from_numpy(labels),
            "masks": torch.from_numpy(masks),
            "image_id": int(image_id),
            "orig_size": (int(orig_size[0]), int(orig_size[1])),
        }
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), target


@dataclass(frozen=True)
class EvalSample:
    """One un-augmented image for inference: RGB uint8 [H, W, 3]."""

    image: np.ndarray
    image_id: int
    file_name: str


class CocoEvalDataset(Dataset):
    """Every image of a split (build the source with filter_empty=False), unaugmented."""

    def __init__(self, source: CocoInstances):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> EvalSample:
        image_id = self.source.image_ids[index]
        return EvalSample(
            image=self.source.load_image(image_id),
            image_id=int(image_id),
            file_name=str(self.source.image_info(image_id)["file_name"]),
        )
