"""The training split shapes the config: queries, input sizes, the prior's shape, mask-stride
warning."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from pycocotools import mask as mask_util
from train_support import TINY, Recorder, train

from sparseinst_cli.config import load_config, override_keys
from sparseinst_cli.data.stats import SplitStats, split_stats
from sparseinst_cli.data.synthetic.crowded import make_crowded_dataset
from sparseinst_cli.training.adapt import TRAIN_WINDOW, adapt_to_data, queries_for


def stats(**kw) -> SplitStats:
    base = dict(num_images=10, max_instances=3, mean_instances=2.0, median_object_size=80.0,
                small_fraction=0.1, median_short_side=480.0, max_long_side=640)
    return SplitStats(**{**base, **kw})


def test_queries_for_gives_headroom_in_multiples_of_8():
    assert [queries_for(n) for n in (1, 5, 8, 60, 87)] == [8, 8, 16, 96, 136]


def test_denser_data_raises_num_masks_with_a_notice():
    cfg = load_config("demo")
    notices = adapt_to_data(cfg, stats(max_instances=60), set())
    assert cfg.model.decoder.num_masks == 96 and cfg.test.max_detections == 100
    assert any("60 instances" in n and "num_masks 8 -> 96" in n for n in notices)
    cfg = load_config("demo")
    assert adapt_to_data(cfg, stats(max_instances=8), set()) == []
    assert cfg.model.decoder.num_masks == 8


def test_an_explicit_small_num_masks_wins_with_a_warning():
    overrides = ["model.decoder.num_masks=20"]
    cfg = load_config("demo", overrides)
    notices = adapt_to_data(cfg, stats(max_instances=60), override_keys(overrides))
    assert cfg.model.decoder.num_masks == 20
    assert len(notices) == 1 and notices[0].startswith("warning:") and "96" in notices[0]


def test_small_objects_keep_their_native_size_unless_sizes_are_given():
    cfg = load_config("demo")  # trains at 192-256, tests at 256
    notices = adapt_to_data(cfg, stats(median_object_size=14.0, median_short_side=360.0,
                                       max_long_side=400), set())
    # From the native size up to 1.5x, tested at the largest scale, where small objects are
    # found best.
    assert cfg.input.min_size_train == [352, 400, 448, 544] and cfg.input.min_size_test == 544
    assert cfg.input.max_size_test >= 500 and cfg.input.max_size_train >= 500
    assert any("native" in n for n in notices)
    assert any(n.startswith("warning:") and "mask_stride=4" in n for n in notices)
    given = ["input.min_size_test=256"]
    cfg = load_config("demo", given)
    small = stats(median_object_size=14.0, median_short_side=360.0)
    adapt_to_data(cfg, small, override_keys(given))
    assert cfg.input.min_size_test == 256 and max(cfg.input.min_size_train) == 256
    cfg = load_config("demo")  # large objects: the config's sizes stay
    assert adapt_to_data(cfg, stats(median_short_side=360.0), set()) == []
    assert cfg.input.min_size_test == 256


def test_small_objects_train_on_windows_unless_the_user_sets_them():
    small = stats(median_object_size=14.0, median_short_side=360.0)
    cfg = load_config("small")
    notices = adapt_to_data(cfg, small, set())
    assert cfg.input.train_window == TRAIN_WINDOW < max(cfg.input.min_size_train)
    assert any(f"{TRAIN_WINDOW} px windows" in n for n in notices)
    given = ["input.train_window=0"]
    cfg = load_config("small", given)
    assert not any("windows" in n for n in adapt_to_data(cfg, small, override_keys(given)))
    assert cfg.input.train_window == 0
    cfg = load_config("small")  # large objects: whole images
    adapt_to_data(cfg, stats(median_short_side=360.0), set())
    assert cfg.input.train_window == 0
    cfg = load_config("demo", ["input.min_size_test=256"])  # images no larger than the window
    adapt_to_data(cfg, stats(median_object_size=14.0, median_short_side=200.0),
                  override_keys(["input.min_size_test=256"]))
    assert cfg.input.train_window == 0


def test_small_config_resolves_small_objects_without_the_stride_warning():
    cfg = load_config("small")
    notices = adapt_to_data(cfg, stats(median_object_size=14.0, median_short_side=360.0), set())
    assert not any("mask_stride" in n for n in notices)


def test_split_stats_reads_counts_sizes_and_skips_crowd(tmp_path):
    anns = [{"id": i, "image_id": 1 + (i > 2), "area": 100.0 * (i + 1), "iscrowd": 0}
            for i in range(4)]
    anns.append({"id": 9, "image_id": 1, "area": 50.0, "iscrowd": 1})
    images = [{"id": 1, "height": 300, "width": 400}, {"id": 2, "height": 500, "width": 200}]
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": []}))
    s = split_stats(path)
    assert (s.num_images, s.max_instances, s.mean_instances) == (2, 3, 2.0)
    assert s.median_short_side == 250 and s.max_long_side == 500
    assert s.median_object_size == pytest.approx((200**0.5 + 300**0.5) / 2)
    assert s.small_fraction == 1.0


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    return make_crowded_dataset(tmp_path_factory.mktemp("crowded"), num_train=3, num_val=1)


def _tiny_without(*prefixes: str) -> tuple[str, ...]:
    return tuple(o for o in TINY if not o.startswith(prefixes)) + ("solver.max_iter=1",
                                                                   "solver.steps=[]")


def test_chosen_values_reach_config_yaml_and_the_notice(crowded, tmp_path):
    rec = Recorder()
    summary = train(crowded, tmp_path, base=_tiny_without("model.decoder.num_masks", "input.",
                                                          "solver.max_iter", "solver.steps"),
                    recorder=rec)
    saved = yaml.safe_load((summary.run_dir / "config.yaml").read_text())
    densest = split_stats(crowded.parent / "annotations" / "train.json").max_instances
    assert saved["model"]["decoder"]["num_masks"] == queries_for(densest)
    assert any(f"{densest} instances" in n for n in rec.notices)
    assert saved["input"]["min_size_test"] > 256  # native size of the 320-400 px images
    assert saved["input"]["train_window"] == TRAIN_WINDOW
    rec = Recorder()
    summary = train(crowded, tmp_path, base=_tiny_without("solver.max_iter", "solver.steps"),
                    recorder=rec)
    saved = yaml.safe_load((summary.run_dir / "config.yaml").read_text())
    assert saved["model"]["decoder"]["num_masks"] == 8
    assert any(n.startswith("warning:") and "num_masks=8" in n for n in rec.notices)


def test_split_stats_measures_the_width_and_elongation_of_masks(tmp_path):
    """A 10 x 60 rectangle: minor axis 4 * sqrt(10^2 / 12) = 11.5 px, major 69.3 px, from a
    polygon and from the same mask as an RLE."""
    rect = np.zeros((100, 120), np.uint8)
    rect[20:30, 30:90] = 1
    rle = mask_util.encode(np.asfortranarray(rect))
    rle["counts"] = rle["counts"].decode()
    anns = [{"id": 1, "image_id": 1, "iscrowd": 0, "area": 600.0,
             "segmentation": [[30, 20, 90, 20, 90, 30, 30, 30]]},
            {"id": 2, "image_id": 1, "iscrowd": 0, "area": 600.0, "segmentation": rle}]
    path = tmp_path / "a.json"
    images = [{"id": 1, "height": 100, "width": 120}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": []}))
    s = split_stats(path)
    assert s.median_width == pytest.approx(4 * (100 / 12) ** 0.5, rel=0.05)
    assert s.median_elongation == pytest.approx(6.0, rel=0.05)
    assert s.object_width == s.median_width


def test_a_thin_object_is_small_by_its_width():
    """A 12 x 80 px rod (sqrt of its area 31, width 14) trains at its native size."""
    cfg = load_config("demo")
    adapt_to_data(cfg, stats(median_object_size=40.0, median_width=14.0, median_elongation=6.0,
                             median_short_side=320.0), set())
    assert min(cfg.input.min_size_train) >= 320
