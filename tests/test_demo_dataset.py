"""The synthetic demo dataset and the seeded, resumable training loader over it."""

import hashlib
import json
from pathlib import Path

import pytest
from file_support import tree_digest

from sparseinst_cli.data.coco import CocoInstances, CocoTrainDataset
from sparseinst_cli.data.datasets import resolve_split
from sparseinst_cli.data.loader import TrainSampler, build_train_loader
from sparseinst_cli.data.synthetic.demo import make_demo_dataset
from sparseinst_cli.data.transforms import TransformConfig

SMALL = {"num_train": 12, "num_val": 4, "image_size": (96, 128)}



@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    make_demo_dataset(root, **SMALL)
    return root


def test_generation_is_deterministic(demo_root, tmp_path):
    make_demo_dataset(tmp_path, **SMALL)
    assert tree_digest(tmp_path) == tree_digest(demo_root)
    assert len(list((tmp_path / "images" / "train").glob("*.jpg"))) == 12


def test_reused_when_parameters_match(tmp_path):
    yaml_path = make_demo_dataset(tmp_path, **SMALL)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert make_demo_dataset(tmp_path, **SMALL) == yaml_path
    assert {p: p.stat().st_mtime_ns for p in before} == before
    make_demo_dataset(tmp_path, **{**SMALL, "num_train": 5})  # changed: regenerated
    assert len(list((tmp_path / "images" / "train").glob("*.jpg"))) == 5
    assert len(json.loads((tmp_path / "annotations" / "train.json").read_text())["images"]) == 5


def test_loads_with_noncontiguous_ids(demo_root):
    spec = resolve_split(str(demo_root / "data.yaml"), "val")
    src = CocoInstances(annotations=spec.annotations, images=spec.images, names=spec.names)
    assert src.category_ids == [1, 3, 7] and src.class_names == ["circle", "rectangle", "triangle"]
    train = json.loads((demo_root / "annotations" / "train.json").read_text())
    kinds = {type(a["segmentation"]).__name__ for a in train["annotations"]}
    assert kinds == {"list", "dict"}  # polygons for whole shapes, RLE for occluded ones
    assert all(a["area"] >= 300 for a in train["annotations"])
    ds = CocoTrainDataset(src, transform=TransformConfig(min_sizes=(96,), max_size=200))
    image, target = ds[0]
    assert image.shape[1:] == target["masks"].shape[1:] and len(target["labels"]) >= 1


def test_resolve_demo_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEINST_DATASETS", str(tmp_path))
    import sparseinst_cli.data.datasets as datasets

    monkeypatch.setattr(datasets, "make_demo_dataset",
                        lambda root: make_demo_dataset(root, **SMALL))
    spec = datasets.resolve_split("demo", "train")
    assert spec.annotations == tmp_path / "demo" / "annotations" / "train.json"
    assert spec.name == "demo/train"


def train_dataset(root: Path) -> CocoTrainDataset:
    spec = resolve_split(str(root / "data.yaml"), "train")
    cfg = TransformConfig(min_sizes=(64, 80, 96), max_size=160, crop_enabled=True,
                          crop_size=(48, 80), crop_resize_sizes=(96, 112))
    return CocoTrainDataset(CocoInstances(annotations=spec.annotations, images=spec.images),
                            transform=cfg, seed=3)


def batches(loader, n: int) -> list[list[tuple]]:
    """n batches as [(image_id, image bytes digest, labels, masks digest), ...]."""
    out, it = [], iter(loader)
    for _ in range(n):
        images, targets = next(it)
        out.append([(t["image_id"], hashlib.sha1(im.numpy().tobytes()).hexdigest(),
                     t["labels"].tolist(), hashlib.sha1(t["masks"].numpy().tobytes()).hexdigest())
                    for im, t in zip(images, targets, strict=True)])
    return out


def test_loader_same_for_any_workers_and_resume(demo_root):
    ds = train_dataset(demo_root)
    serial = batches(build_train_loader(ds, batch_size=4, num_workers=0, seed=3), 5)
    parallel = batches(build_train_loader(ds, batch_size=4, num_workers=2, seed=3), 5)
    assert serial == parallel
    resumed = batches(build_train_loader(ds, batch_size=4, num_workers=0, seed=3, start_iter=3), 2)
    assert resumed == serial[3:5]
    # 5 iterations x 4 samples cross the 12-image epoch boundary; each epoch is a permutation
    ids = [s[0] for b in serial for s in b]
    assert sorted(ids[:12]) == sorted(set(ids[:12])) and len(set(ids[:12])) == 12
    other_seed = batches(build_train_loader(ds, batch_size=4, num_workers=0, seed=4), 1)
    assert other_seed != serial[:1]


def test_ranks_split_the_global_batch(demo_root):
    ds = train_dataset(demo_root)
    whole = batches(build_train_loader(ds, batch_size=4, num_workers=0, seed=3), 2)
    ranks = [batches(build_train_loader(ds, batch_size=2, num_workers=0, seed=3, rank=r,
                                        world_size=2), 2) for r in range(2)]
    for i in range(2):
        assert ranks[0][i] + ranks[1][i] == whole[i]
    samplers = [TrainSampler(12, batch_size=2, rank=r, world_size=2) for r in range(2)]
    assert set(samplers[0].samples_of(7)).isdisjoint(samplers[1].samples_of(7))
