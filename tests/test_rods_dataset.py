"""The synthetic rods dataset: deterministic, elongated, touching, loadable; its statistics say
"elongated" and the adaptation shapes the location prior for it."""
from pathlib import Path

import numpy as np
import pytest
from file_support import tree_digest
from pycocotools import mask as mask_util

from sparseinst_cli.config import load_config
from sparseinst_cli.data.coco import load_coco_json
from sparseinst_cli.data.stats import split_stats
from sparseinst_cli.data.synthetic.rods import RODS_PER_IMAGE, make_rods_dataset
from sparseinst_cli.training.adapt import adapt_to_data

SMALL = {"num_train": 6, "num_val": 2}


@pytest.fixture(scope="module")
def rods_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rods")
    make_rods_dataset(root, **SMALL)
    return root


def test_generation_is_deterministic(rods_root, tmp_path):
    make_rods_dataset(tmp_path, **SMALL)
    assert tree_digest(tmp_path) == tree_digest(rods_root)
    make_rods_dataset(tmp_path, **{**SMALL, "seed": 1})
    assert tree_digest(tmp_path) != tree_digest(rods_root)


def test_rods_are_elongated_touching_and_never_overlap(rods_root):
    coco = load_coco_json(rods_root / "annotations" / "train.json")
    assert [c["name"] for c in coco.dataset["categories"]] == ["rod"]
    touching = 0
    for img_id, img in coco.imgs.items():
        anns = coco.imgToAnns[img_id]
        assert RODS_PER_IMAGE[0] // 2 <= len(anns) <= RODS_PER_IMAGE[1]
        stack = np.stack([coco.annToMask(a) for a in anns]).astype(np.int32)
        assert stack.shape[1:] == (img["height"], img["width"])
        assert stack.sum(0).max() == 1
        assert all(a["area"] == float(mask_util.area(a["segmentation"])) for a in anns)
        labels = (stack * np.arange(1, len(anns) + 1)[:, None, None]).sum(0)
        right = (labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] > 0) & (labels[:, :-1] > 0)
        touching += int(right.sum())
    assert touching > 0  # colonies: rods share borders
    stats = split_stats(rods_root / "annotations" / "train.json")
    assert 8 <= stats.median_width <= 20 and stats.median_elongation >= 3


def test_elongated_data_gets_an_oriented_prior_round_data_keeps_its_own(rods_root):
    stats = split_stats(rods_root / "annotations" / "train.json")
    cfg = load_config("small")
    notices = adapt_to_data(cfg, stats, set())
    assert cfg.model.decoder.object_shape == "elongated"
    assert any("elongated" in n and "object_shape=elongated" in n for n in notices)
    # the user's word wins
    cfg = load_config("small", ["model.decoder.object_shape=round"])
    adapt_to_data(cfg, stats, {"model.decoder.object_shape"})
    assert cfg.model.decoder.object_shape == "round"
    # round objects, and a config without the prior, are left alone
    round_stats = type(stats)(**{**stats.__dict__, "median_elongation": 1.2})
    cfg = load_config("small")
    adapt_to_data(cfg, round_stats, set())
    assert cfg.model.decoder.object_shape == "round"
    cfg = load_config("demo")
    adapt_to_data(cfg, stats, set())
    assert cfg.model.decoder.object_shape == "round"


def test_elongated_data_widens_the_peak_window_by_the_object_width(rods_root):
    """Half the window stays under width / sqrt(2) at the test scale, in stride-4 cells: the
    centre of a touching neighbour as wide as the median rod never falls inside it."""
    stats = split_stats(rods_root / "annotations" / "train.json")
    rods = type(stats)(**{**stats.__dict__, "median_width": 13.6, "median_short_side": 320.0})
    cfg = load_config("small")
    notices = adapt_to_data(cfg, rods, set())
    # tested at 480 px: 13.6 px -> 20.4 px = 5.1 cells; 5.1 / sqrt(2) = 3.6 -> half 3
    assert cfg.input.min_size_test == 480 and cfg.model.decoder.peak_window == 7
    assert any("model.decoder.peak_window=7" in n for n in notices)
    thin = type(stats)(**{**rods.__dict__, "median_width": 6.0})  # 2.25 cells -> half 1
    cfg = load_config("small")
    adapt_to_data(cfg, thin, set())
    assert cfg.model.decoder.peak_window == 3
    # the user's word wins; round objects and the official variants keep CenterNet's 3x3
    cfg = load_config("small", ["model.decoder.peak_window=5"])
    adapt_to_data(cfg, rods, {"model.decoder.peak_window"})
    assert cfg.model.decoder.peak_window == 5
    for config, shape_stats in (("small", type(stats)(**{**rods.__dict__,
                                                          "median_elongation": 1.2})),
                                ("demo", rods)):
        cfg = load_config(config)
        adapt_to_data(cfg, shape_stats, set())
        assert cfg.model.decoder.peak_window == 3
    # elongated by the user's word, on a split without masks to measure: left as it is
    cfg = load_config("small", ["model.decoder.object_shape=elongated"])
    unmeasured = type(stats)(**{**rods.__dict__, "median_width": float("nan"),
                                "median_object_size": float("nan"),
                                "median_elongation": float("nan")})
    adapt_to_data(cfg, unmeasured, {"model.decoder.object_shape"})
    assert cfg.model.decoder.peak_window == 3
