"""Translate the official detectron2-style SparseInst YAML into our config tree.

Keys that change the model, data or schedule are translated; keys that only name detectron2
machinery are accepted and ignored; anything else is rejected by name, so no setting is
silently dropped.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from .errors import UserError

# detectron2 key -> our dotted key (values copied as they are).
TRANSLATE = {
    "MODEL.PIXEL_MEAN": "model.pixel_mean",
    "MODEL.PIXEL_STD": "model.pixel_std",
    "MODEL.SPARSE_INST.ENCODER.NUM_CHANNELS": "model.encoder.channels",
    "MODEL.SPARSE_INST.DECODER.NUM_MASKS": "model.decoder.num_masks",
    "MODEL.SPARSE_INST.DECODER.NUM_CLASSES": "model.num_classes",
    "MODEL.SPARSE_INST.DECODER.KERNEL_DIM": "model.decoder.kernel_dim",
    "MODEL.SPARSE_INST.DECODER.SCALE_FACTOR": "model.decoder.scale_factor",
    "MODEL.SPARSE_INST.DECODER.GROUPS": "model.decoder.groups",
    "MODEL.SPARSE_INST.DECODER.INST.DIM": "model.decoder.inst_dim",
    "MODEL.SPARSE_INST.DECODER.INST.CONVS": "model.decoder.inst_convs",
    "MODEL.SPARSE_INST.DECODER.MASK.DIM": "model.decoder.mask_dim",
    "MODEL.SPARSE_INST.DECODER.MASK.CONVS": "model.decoder.mask_convs",
    "MODEL.SPARSE_INST.CLS_THRESHOLD": "test.cls_threshold",
    "MODEL.SPARSE_INST.MASK_THRESHOLD": "test.mask_threshold",
    "MODEL.SPARSE_INST.MAX_DETECTIONS": "test.max_detections",
    "MODEL.SPARSE_INST.LOSS.CLASS_WEIGHT": "loss.class_weight",
    "MODEL.SPARSE_INST.LOSS.MASK_PIXEL_WEIGHT": "loss.mask_bce_weight",
    "MODEL.SPARSE_INST.LOSS.MASK_DICE_WEIGHT": "loss.dice_weight",
    "MODEL.SPARSE_INST.LOSS.OBJECTNESS_WEIGHT": "loss.objectness_weight",
    "MODEL.SPARSE_INST.MATCHER.ALPHA": "loss.matcher_alpha",
    "MODEL.SPARSE_INST.MATCHER.BETA": "loss.matcher_beta",
    "INPUT.MIN_SIZE_TRAIN": "input.min_size_train",
    "INPUT.MAX_SIZE_TRAIN": "input.max_size_train",
    "INPUT.MIN_SIZE_TEST": "input.min_size_test",
    "INPUT.MAX_SIZE_TEST": "input.max_size_test",
    "INPUT.CROP.ENABLED": "input.crop_enabled",
    "INPUT.CROP.SIZE": "input.crop_size",
    "SOLVER.IMS_PER_BATCH": "solver.batch_size",
    "SOLVER.BASE_LR": "solver.lr",
    "SOLVER.WEIGHT_DECAY": "solver.weight_decay",
    "SOLVER.WEIGHT_DECAY_NORM": "solver.weight_decay_norm",
    "SOLVER.BACKBONE_MULTIPLIER": "solver.backbone_lr_multiplier",
    "SOLVER.MAX_ITER": "solver.max_iter",
    "SOLVER.STEPS": "solver.steps",
    "SOLVER.GAMMA": "solver.gamma",
    "SOLVER.WARMUP_ITERS": "solver.warmup_iters",
    "SOLVER.WARMUP_FACTOR": "solver.warmup_factor",
    "SOLVER.CHECKPOINT_PERIOD": "solver.checkpoint_period",
    "TEST.EVAL_PERIOD": "solver.eval_period",
    "DATALOADER.NUM_WORKERS": "data.num_workers",
    "SEED": "seed",
}
# Keys that only name detectron2 machinery, or whose only supported value is the default.
IGNORED = {
    "VERSION",
    "OUTPUT_DIR",
    "CUDNN_BENCHMARK",
    "VIS_PERIOD",
    "GLOBAL",
    "MODEL.META_ARCHITECTURE",
    "MODEL.WEIGHTS",
    "MODEL.DEVICE",
    "MODEL.MASK_ON",
    "MODEL.LOAD_PROPOSALS",
    "MODEL.BACKBONE.FREEZE_AT",
    "MODEL.RESNETS.OUT_FEATURES",
    "MODEL.RESNETS.STRIDE_IN_1X1",
    "MODEL.RESNETS.NORM",
    "MODEL.RESNETS.NUM_GROUPS",
    "MODEL.RESNETS.WIDTH_PER_GROUP",
    "MODEL.RESNETS.RES5_DILATION",
    "MODEL.RESNETS.DEFORM_MODULATED",
    "MODEL.RESNETS.DEFORM_NUM_GROUPS",
    "MODEL.RESNETS.STEM_OUT_CHANNELS",
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "MODEL.CSPNET.OUT_FEATURES",
    "MODEL.CSPNET.NORM",
    "MODEL.PVT.OUT_FEATURES",
    "MODEL.PVT.LINEAR",
    "MODEL.SPARSE_INST.ENCODER.NAME",
    "MODEL.SPARSE_INST.ENCODER.IN_FEATURES",
    "MODEL.SPARSE_INST.ENCODER.NORM",
    "MODEL.SPARSE_INST.DECODER.OUTPUT_IAM",
    "MODEL.SPARSE_INST.DECODER.NAME",
    "MODEL.SPARSE_INST.LOSS.NAME",
    "MODEL.SPARSE_INST.LOSS.ITEMS",
    "MODEL.SPARSE_INST.MATCHER.NAME",
    "MODEL.SPARSE_INST.DATASET_MAPPER",
    "INPUT.FORMAT",
    "INPUT.MASK_FORMAT",
    "INPUT.MIN_SIZE_TRAIN_SAMPLING",
    "INPUT.CROP.TYPE",
    "INPUT.RANDOM_FLIP",
    "DATASETS.TRAIN",
    "DATASETS.TEST",
    "SOLVER.OPTIMIZER",
    "SOLVER.AMP.ENABLED",
    "SOLVER.LR_SCHEDULER_NAME",
    "SOLVER.WARMUP_METHOD",
    "SOLVER.MOMENTUM",
    "SOLVER.NESTEROV",
    "SOLVER.CLIP_GRADIENTS.ENABLED",
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE",
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE",
    "SOLVER.WEIGHT_DECAY_BIAS",
    "SOLVER.BIAS_LR_FACTOR",
    "SOLVER.REFERENCE_WORLD_SIZE",
    "DATALOADER.FILTER_EMPTY_ANNOTATIONS",
    "DATALOADER.ASPECT_RATIO_GROUPING",
    "DATALOADER.SAMPLER_TRAIN",
    "DATALOADER.REPEAT_THRESHOLD",
    "TEST.AUG.ENABLED",
    "TEST.DETECTIONS_PER_IMAGE",
}
DECODERS = {
    "BaseIAMDecoder": "iam",
    "GroupIAMDecoder": "giam",
    "GroupIAMSoftDecoder": "giam_softmax",
}
PVT_NAMES = {"b0": "pvt_v2_b0", "b1": "pvt_v2_b1", "b2": "pvt_v2_b2", "b2_li": "pvt_v2_b2_li"}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = _literal(value)
    return flat


def _literal(value: Any) -> Any:
    """yacs reads tuples written as strings, e.g. STEPS: (210000, 250000)."""
    if isinstance(value, str) and value.strip().startswith("("):
        try:
            return list(ast.literal_eval(value))
        except (ValueError, SyntaxError):
            return value
    return value


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = list(value) if isinstance(value, tuple) else value


def _backbone(flat: dict[str, Any], source: Path) -> dict[str, Any]:
    """MODEL.BACKBONE.NAME + RESNETS/CSPNET/PVT keys -> our backbone section and key layout."""
    builder = flat.pop("MODEL.BACKBONE.NAME", "build_resnet_backbone")
    depth = int(flat.pop("MODEL.RESNETS.DEPTH", 50))
    deform = flat.pop("MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False] * 4)
    dcn = [stage for stage, on in zip((2, 3, 4, 5), deform) if on]
    if builder == "build_resnet_backbone":
        return {
            "backbone": {"name": f"resnet{depth}", "dcn_stages": dcn},
            "checkpoint_layout": "detectron2",
        }
    if builder == "build_resnet_vd_backbone":
        return {
            "backbone": {"name": f"resnet{depth}d", "dcn_stages": dcn},
            "checkpoint_layout": "timm",
        }
    if builder == "build_cspnet_backbone":
        name = flat.pop("MODEL.CSPNET.NAME", "cspdarknet53")
        return {"backbone": {"name": name}, "checkpoint_layout": "timm"}
    if builder == "build_pyramid_vision_transformer":
        name = str(flat.pop("MODEL.PVT.NAME", "b1"))
        if name not in PVT_NAMES:
            raise UserError(
                f"{source}: MODEL.PVT.NAME '{name}' is not one of {', '.join(PVT_NAMES)}"
            )
        return {"backbone": {"name": PVT_NAMES[name]}, "checkpoint_layout": "pvt"}
    raise UserError(f"{source}: MODEL.BACKBONE.NAME '{builder}' is not supported")


def translate_detectron2(tree: dict[str, Any], *, source: Path) -> dict[str, Any]:
    """An official config tree (after `_BASE_` merging) -> our nested config dict."""
    flat = _flatten(tree)
    out: dict[str, Any] = {"model": _backbone(flat, source)}
    decoder = flat.pop("MODEL.SPARSE_INST.DECODER.NAME", "GroupIAMDecoder")
    if decoder not in DECODERS:
        raise UserError(f"{source}: decoder '{decoder}' is not one of {', '.join(DECODERS)}")
    _set(out, "model.decoder.kind", DECODERS[decoder])
    if flat.get("SOLVER.AMP.ENABLED"):
        _set(out, "solver.amp", "fp16")
    if (
        flat.get("SOLVER.CLIP_GRADIENTS.ENABLED")
        and flat.get("SOLVER.CLIP_GRADIENTS.CLIP_TYPE") == "full_model"
    ):
        _set(out, "solver.clip_grad_norm", float(flat.get("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 1.0)))
    rejected = []
    for key, value in flat.items():
        if key in TRANSLATE:
            _set(out, TRANSLATE[key], value)
        elif key not in IGNORED:
            rejected.append(key)
    if rejected:
        raise UserError(
            f"{source}: unsupported detectron2 config key(s): {', '.join(sorted(rejected))}"
        )
    return out
