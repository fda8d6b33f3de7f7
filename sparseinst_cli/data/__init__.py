"""Data: COCO parsing, augmentation, the synthetic datasets, `--data` resolution and loaders."""

from sparseinst_cli.data.coco import (
    CocoEvalDataset,
    CocoInstances,
    CocoTrainDataset,
    EvalSample,
    load_coco_json,
    read_image_rgb,
)
from sparseinst_cli.data.datasets import SplitSpec, resolve_split
from sparseinst_cli.data.loader import build_eval_loader, build_train_loader, collate
from sparseinst_cli.data.synthetic.crowded import make_crowded_dataset
from sparseinst_cli.data.synthetic.demo import make_demo_dataset
from sparseinst_cli.data.transforms import (
    TransformConfig,
    apply_train_transforms,
    resize_image,
    shortest_edge_size,
)

__all__ = [
    "CocoEvalDataset",
    "CocoInstances",
    "CocoTrainDataset",
    "EvalSample",
    "SplitSpec",
    "TransformConfig",
    "apply_train_transforms",
    "build_eval_loader",
    "build_train_loader",
    "collate",
    "load_coco_json",
    "make_crowded_dataset",
    "make_demo_dataset",
    "read_image_rgb",
    "resize_image",
    "resolve_split",
    "shortest_edge_size",
]
