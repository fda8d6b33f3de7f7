"""engine.evaluate.evaluate_split: inference over a split and its COCO mask AP."""
from __future__ import annotations

import pytest
import torch
from train_support import TINY, make_dataset

from sparseinst_cli.config import load_config
from sparseinst_cli.data.datasets import resolve_split
from sparseinst_cli.engine.evaluate import evaluate_split
from sparseinst_cli.errors import UserError
from sparseinst_cli.modeling import build_model
from sparseinst_cli.predictor import LoadedModel, Predictor


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return resolve_split(str(make_dataset(tmp_path_factory.mktemp("data"))), "val")


def _loaded(ids=(2, 5, 9)) -> LoadedModel:
    torch.manual_seed(0)
    cfg = load_config("demo", [*TINY, f"model.num_classes={len(ids)}"])
    return LoadedModel(build_model(cfg.model).eval(), cfg, [f"c{i}" for i in ids], list(ids))


def test_images_without_detections_give_zero_ap(split):
    predictor = Predictor(None, loaded=_loaded(), cls_threshold=1.0)  # nothing passes
    out = evaluate_split(predictor, split)
    assert out["results"] == [] and out["images"] == 4 and out["AP"] == 0.0


def test_results_use_dataset_category_ids_and_report_progress(split):
    seen = []
    out = evaluate_split(_loaded(), split, batch_size=3, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(3, 4), (4, 4)]
    assert out["results"] and {r["category_id"] for r in out["results"]} <= {2, 5, 9}
    assert set(out["per_class"]) == {"class2", "class5", "class9"}
    assert 0.0 <= out["AP"] <= 100.0


def test_shards_cover_every_image_once(split):
    loaded = _loaded()
    shards = [evaluate_split(loaded, split, rank=r, world_size=2)["results"] for r in (0, 1)]
    ids = [{r["image_id"] for r in shard} for shard in shards]
    assert not ids[0] & ids[1]


def test_a_model_of_other_categories_is_refused(split):
    with pytest.raises(UserError, match="categories"):
        evaluate_split(_loaded(ids=(1, 2)), split)
