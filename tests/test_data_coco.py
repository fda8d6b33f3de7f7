"""COCO parsing, image reading and `--data` resolution on hand-made files."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from sparseinst_cli.data.coco import (
    CocoEvalDataset,
    CocoInstances,
    CocoTrainDataset,
    load_coco_json,
    read_image_rgb,
)
from sparseinst_cli.data.datasets import resolve_split
from sparseinst_cli.data.loader import build_eval_loader
from sparseinst_cli.data.transforms import TransformConfig
from sparseinst_cli.errors import UserError

H, W = 20, 30
IDENTITY = TransformConfig(min_sizes=(H,), max_size=10_000, flip_prob=0.0)


def box_mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def uncompressed_rle(mask: np.ndarray) -> dict:
    """Column-major run lengths starting with zeros, as COCO's iscrowd annotations."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [H, W], "counts": counts}


def write_coco(tmp_path: Path) -> tuple[Path, Path]:
    """Three images: mixed segmentations; crowd only; nothing. Category ids 3, 7, 10."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(images / name)
    rle = mask_util.encode(np.asfortranarray(box_mask(10, 15, 20, 25).astype(np.uint8)))
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "iscrowd": 0, "area": 16.0,
         "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]]},
        {"id": 2, "image_id": 1, "category_id": 3, "iscrowd": 0,
         "segmentation": {"size": [H, W], "counts": rle["counts"].decode("ascii")}},
        {"id": 3, "image_id": 1, "category_id": 10, "iscrowd": 0,
         "segmentation": uncompressed_rle(box_mask(0, 4, 26, 30))},
        {"id": 4, "image_id": 1, "category_id": 3, "iscrowd": 1,
         "segmentation": uncompressed_rle(box_mask(15, 20, 0, 5))},
        {"id": 5, "image_id": 2, "category_id": 3, "iscrowd": 1,
         "segmentation": uncompressed_rle(box_mask(0, 5, 0, 5))},
    ]
    data = {
        "images": [{"id": i + 1, "file_name": n, "height": H, "width": W}
                   for i, n in enumerate(("a.png", "b.png", "c.png"))],
        "annotations": anns,
        "categories": [{"id": 10, "name": "ten"}, {"id": 3, "name": "three"},
                       {"id": 7, "name": "seven"}],
    }
    ann_path = tmp_path / "instances.json"
    ann_path.write_text(json.dumps(data))
    return ann_path, images


def test_category_mapping_and_filtering(tmp_path):
    ann, images = write_coco(tmp_path)
    src = CocoInstances(annotations=ann, images=images)
    assert src.category_ids == [3, 7, 10] and src.num_classes == 3
    assert src.class_names == ["three", "seven", "ten"]
    assert src.image_ids == [1]  # image 2 has only a crowd, image 3 nothing
    assert CocoInstances(annotations=ann, images=images, filter_empty=False).image_ids == [1, 2, 3]
    renamed = CocoInstances(annotations=ann, images=images, names=["a", "b", "c"])
    assert renamed.class_names == ["a", "b", "c"]
    with pytest.raises(UserError, match="names"):
        CocoInstances(annotations=ann, images=images, names=["a"])


def test_train_sample_masks_all_formats(tmp_path):
    ann, images = write_coco(tmp_path)
    ds = CocoTrainDataset(CocoInstances(annotations=ann, images=images), transform=IDENTITY)
    image, target = ds[0]
    assert image.shape == (3, H, W) and str(image.dtype) == "torch.uint8"
    assert target["image_id"] == 1 and target["orig_size"] == (H, W)
    assert target["labels"].tolist() == [1, 0, 2]  # ids 7, 3, 10; the crowd is excluded
    masks = target["masks"].numpy()
    assert masks.dtype == bool and masks.shape == (3, H, W)
    np.testing.assert_array_equal(masks[0], box_mask(2, 6, 2, 6))
    np.testing.assert_array_equal(masks[1], box_mask(10, 15, 20, 25))
    np.testing.assert_array_equal(masks[2], box_mask(0, 4, 26, 30))
    again_image, again = ds[(0, 0)]
    assert (again_image == image).all() and (again["masks"] == target["masks"]).all()


def test_missing_area_and_iscrowd_are_filled(tmp_path):
    ann, _ = write_coco(tmp_path)
    coco = load_coco_json(ann)
    assert coco.anns[2]["area"] == 25.0 and coco.anns[2]["iscrowd"] == 0


def test_eval_dataset_returns_original_image(tmp_path):
    ann, images = write_coco(tmp_path)
    ds = CocoEvalDataset(CocoInstances(annotations=ann, images=images, filter_empty=False))
    assert len(ds) == 3
    sample = ds[2]
    assert sample.image.shape == (H, W, 3) and sample.image.dtype == np.uint8
    assert sample.image_id == 3 and sample.file_name == "c.png"


def test_eval_loader_shards_in_order(tmp_path):
    ann, images = write_coco(tmp_path)
    ds = CocoEvalDataset(CocoInstances(annotations=ann, images=images, filter_empty=False))
    shards = [[s.image_id for batch in build_eval_loader(ds, batch_size=2, rank=r, world_size=2)
               for s in batch] for r in range(2)]
    assert shards == [[1, 3], [2]]


def test_not_coco_names_missing_keys(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(UserError, match=r"x\.json.*annotations, categories"):
        load_coco_json(path)
    path.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_coco_json(path)


def test_unknown_category_is_an_error(tmp_path):
    ann, images = write_coco(tmp_path)
    data = json.loads(ann.read_text())
    data["annotations"][0]["category_id"] = 99
    ann.write_text(json.dumps(data))
    with pytest.raises(UserError, match="category_id 99"):
        CocoInstances(annotations=ann, images=images)


def test_missing_and_corrupt_images(tmp_path):
    ann, images = write_coco(tmp_path)
    src = CocoInstances(annotations=ann, images=images, filter_empty=False)
    (images / "a.png").unlink()
    with pytest.raises(UserError, match="a.png"):
        src.load_image(1)
    (images / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError, match="b.png"):
        src.load_image(2)
    Image.fromarray(np.zeros((H + 1, W, 3), np.uint8)).save(images / "c.png")
    with pytest.raises(UserError, match="c.png is 30x21"):
        src.load_image(3)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA", "CMYK"])
def test_read_image_modes(tmp_path, mode):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[:, :4] = 200
    img = Image.fromarray(rgb)
    if mode == "I;16":
        img = Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257)
        assert img.mode == "I;16"
    elif mode == "P":
        img = img.convert("P")
        img.info["transparency"] = 0
    else:
        img = img.convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    img.save(path)
    out = read_image_rgb(path)
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    assert abs(int(out[0, 0, 0]) - 200) <= 5 and out[0, 7].max() <= 3  # P quantises 200 to 204


def test_read_image_honours_exif_orientation(tmp_path):
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[:, :5] = 255  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "r.jpg"
    Image.fromarray(rgb).save(path, exif=exif, quality=100)
    out = read_image_rgb(path)
    assert out.shape == (20, 10, 3)
    assert out[:5].mean() > 200 and out[8:].mean() < 30  # the band is now on top


def test_resolve_split_from_yaml(tmp_path):
    ann, images = write_coco(tmp_path)
    yaml_path = tmp_path / "data.yaml"
    yaml_path.write_text(
        "train: {images: images, annotations: instances.json}\nnames: [a, b, c]\n"
    )
    spec = resolve_split(str(yaml_path), "train")
    assert spec.images == images and spec.annotations == ann
    assert spec.names == ("a", "b", "c")
    assert resolve_split(str(tmp_path), "train") == spec  # a folder holding data.yaml
    with pytest.raises(UserError, match="no 'val' split"):
        resolve_split(str(yaml_path), "val")
    yaml_path.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        resolve_split(str(yaml_path), "train")
    yaml_path.write_text("train: {images: images, annotations: nope.json}\n")
    with pytest.raises(UserError, match="nope.json"):
        resolve_split(str(yaml_path), "train")
    with pytest.raises(UserError, match="neither a file"):
        resolve_split(str(tmp_path / "missing.yaml"), "train")


def test_resolve_builtin_coco(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEINST_DATASETS", str(tmp_path))
    with pytest.raises(UserError, match="SPARSEINST_DATASETS"):
        resolve_split("coco_2017_val", "val")
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "val2017").mkdir()
    (tmp_path / "coco" / "annotations" / "instances_val2017.json").write_text("{}")
    spec = resolve_split("coco_2017_val", "val")
    assert spec.images == tmp_path / "coco" / "val2017" and spec.name == "coco_2017_val"
