"""benchmarks/real_nuclei.py on a made-up stand-in of the stardist files (nothing downloaded)."""

import json
import zipfile
from pathlib import Path

import numpy as np
from file_support import load_benchmark
from PIL import Image

from sparseinst_cli.data.coco import load_coco_json


def fake_wheel(path: Path, rn) -> Path:
    """A zip laid out like the stardist wheel: 16-bit image and label TIFFs, 512 x 512."""
    yy, xx = np.mgrid[:512, :512]
    labels = np.zeros((512, 512), np.uint16)
    for k, (cy, cx) in enumerate([(y, x) for y in range(20, 512, 40) for x in range(20, 512, 40)]):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < 144] = k + 1
    image = (labels > 0) * 3000 + 500
    with zipfile.ZipFile(path, "w") as wheel:
        for name, array in ((rn.IMAGE, image.astype(np.uint16)), (rn.MASK, labels)):
            tif = path.parent / Path(name).name
            Image.fromarray(array).save(tif)
            wheel.write(tif, name)
    return path


def test_tiles_left_half_to_train_right_half_to_val(tmp_path):
    rn = load_benchmark("real_nuclei")
    wheel = fake_wheel(tmp_path / "stardist-0-py3-none-any.whl", rn)
    data = rn.make_real_nuclei(wheel, tmp_path / "real")
    digest = {p: p.read_bytes() for p in (tmp_path / "real").rglob("*") if p.is_file()}
    rn.make_real_nuclei(tmp_path, tmp_path / "again")  # the folder of the two TIFFs: same set
    assert {p.relative_to(tmp_path / "real"): b for p, b in digest.items()} == {
        p.relative_to(tmp_path / "again"): p.read_bytes()
        for p in (tmp_path / "again").rglob("*") if p.is_file()}
    assert json.loads((tmp_path / "real" / "real_nuclei.json").read_text())["crop"] == 256
    counts = {}
    for split, images in (("train", 3), ("val", 2)):
        coco = load_coco_json(data.parent / "annotations" / f"{split}.json")
        assert len(coco.imgs) == images
        assert all((i["height"], i["width"]) == (256, 256) for i in coco.imgs.values())
        for img_id in coco.imgs:
            masks = np.stack([coco.annToMask(a) for a in coco.imgToAnns[img_id]])
            assert masks.sum(0).max() == 1 and masks.sum((1, 2)).min() >= rn.MIN_PIXELS
        counts[split] = len(coco.dataset["annotations"])
    # discs every 40 px from 20: each 256 px crop holds 6 x 6 whole ones plus the cut seventh
    # row and column (the discs at 260 reach 8 px over the middle line, both ways)
    assert counts == {"train": 3 * 7 * 7, "val": 2 * 7 * 7}
