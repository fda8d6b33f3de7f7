"""Inference over a dataset split and its COCO mask AP; shared by training and `sparseinst eval`.

Each process segments its share of the images (rank::world_size); the COCO results are gathered
and scored by pycocotools on rank 0.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..data.coco import CocoEvalDataset, CocoInstances
from ..data.datasets import SplitSpec
from ..data.loader import build_eval_loader
from ..errors import UserError
from ..evaluation import evaluate_segm, instances_to_coco_results
from ..loading import LoadedModel
from ..predictor import Predictor
from .distributed import gather_objects

Progress = Callable[[int, int], None]  # (images done, total images) on this process


def evaluate_split(
    model: Predictor | LoadedModel,
    split: SplitSpec,
    *,
    min_size: int | None = None,
    max_size: int | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    device: str = "cpu",
    dtype: str = "fp32",
    progress: Progress | None = None,
    rank: int = 0,
    world_size: int = 1,
    max_images: int | None = None,
) -> dict[str, Any]:
    """Segment every image of `split` and score the masks with COCO AP.

    model: a Predictor, or a LoadedModel (its network is put in eval mode and run on `device`
    with `dtype`). min_size/max_size override the config's test sizes. Images without any
    detection are fine. With several processes (rank, world_size) each takes a share and the
    results are gathered. Returns on rank 0 the metrics of `evaluation.evaluate_segm` (AP, AP50,
    ..., per_class; 0-100) plus `results` (COCO result dicts, RLE masks) and `images`; other
    ranks get only `results` of their share.
    """
    predictor = model if isinstance(model, Predictor) else Predictor(
        None, loaded=model, device=device, dtype=dtype
    )
    predictor.min_size = min_size or predictor.min_size
    predictor.max_size = max_size or predictor.max_size
    source = CocoInstances(
        annotations=split.annotations, images=split.images, filter_empty=False, names=split.names
    )
    check_categories(predictor.loaded.category_ids, source.category_ids, split.name)
    if max_images is not None:
        source.image_ids = source.image_ids[:max_images]
    results = _infer(predictor, source, batch_size, num_workers, progress, rank, world_size)
    shards = gather_objects(results)
    if rank != 0:
        return {"results": results}
    merged = [r for shard in shards for r in shard]
    metrics = evaluate_segm(source.coco, merged, image_ids=source.image_ids)
    return {**metrics, "results": merged, "images": len(source.image_ids)}


def _infer(
    predictor: Predictor, source: CocoInstances, batch_size: int, num_workers: int,
    progress: Progress | None, rank: int, world_size: int,
) -> list[dict]:
    """COCO results of this process's share of the images."""
    loader = build_eval_loader(
        CocoEvalDataset(source), batch_size=batch_size, num_workers=num_workers, rank=rank,
        world_size=world_size,
    )
    ids = predictor.loaded.category_ids
    total = len(loader.sampler)
    done, results = 0, []
    was_training = predictor.model.training
    predictor.model.eval()
    try:
        for samples in loader:
            batch = predictor.prepare([s.image for s in samples])
            instances = predictor.postprocess(predictor.forward(batch), batch)
            for sample, inst in zip(samples, instances):
                results += instances_to_coco_results(
                    sample.image_id, inst.masks, inst.scores, inst.labels, ids
                )
            done += len(samples)
            if progress is not None:
                progress(done, total)
    finally:
        predictor.model.train(was_training)
    return results


def check_categories(model_ids: list[int], data_ids: list[int], name: str) -> None:
    """The model's category ids must be the dataset's, or AP would compare unrelated labels."""
    if sorted(model_ids) != sorted(data_ids):
        raise UserError(
            f"the model predicts {len(model_ids)} categories (ids {_ids(model_ids)}) but "
            f"{name} has {len(data_ids)} (ids {_ids(data_ids)}); evaluate it on its own dataset"
        )


def _ids(ids: list[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:6])
    return shown + (", ..." if len(ids) > 6 else "")
