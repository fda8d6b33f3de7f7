"""Dataclass configs: YAML files with `_base_` inheritance, KEY=VALUE overrides, nearest-key errors.

A config is plain data. `build_model` and the engines turn it into constructor arguments;
no module reads a global config.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


@dataclass
class BackboneConfig:
    name: str = (
        "resnet50"  # any timm model with feature_info (resnet50, resnet50d, cspdarknet53, ...)
    )
    norm: str = "frozen_bn"  # frozen_bn (official) | bn (trainable, for training from scratch)
    dcn_stages: list[int] = field(
        default_factory=list
    )  # ResNet stages with DCN 3x3: [4, 5] = res4, res5
    weights: str | None = None  # optional ImageNet backbone: a file, a timm tag or `imagenet`
    pretrained: str | None = None  # the timm tag that `imagenet` fetches (the paper's weights)


@dataclass
class EncoderConfig:
    channels: int = 256


@dataclass
class DecoderConfig:
    kind: str = "giam"  # iam | giam | giam_softmax
    num_masks: int = 100
    groups: int = 4
    inst_dim: int = 256
    inst_convs: int = 4
    mask_dim: int = 256
    mask_convs: int = 4
    kernel_dim: int = 128
    scale_factor: float = 2.0  # masks from stride 8 to the output stride 4 (official)
    # 4: the mask branch ends at stride 4 on a skip from the backbone's stride-4 map, for
    # objects a few stride-8 cells wide (scale_factor then unused); 8: official
    mask_stride: int = 8
    # Mask logits fall with the squared distance to the instance's activation centre, at a
    # per-instance rate: keeps masks apart among many similar small objects (not official)
    centre_prior: bool = False
    # round: the centre prior falls alike in every direction and centre heatmap targets are
    # round; elongated (rods, fibres): the prior falls along and across an axis each instance
    # predicts, and each object's heatmap target is its own ellipse, peaking on the object
    object_shape: str = "round"
    # Each instance's activation map is held near a learned anchor point of the image, so maps
    # find one object each in crowded images of alike objects (not official)
    query_anchors: bool = False
    # Anchors on the peaks of a predicted centre heatmap (one instance per peak, following each
    # image's objects) instead of learned points shared by all images (not official)
    peak_anchors: bool = False
    # Side, in heatmap cells, of the square a peak must be highest in: 3 as CenterNet; wider
    # for elongated objects, whose long heatmap ridge otherwise holds several peaks (not official)
    peak_window: int = 3


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    num_classes: int = 80
    pixel_mean: list[float] = field(default_factory=lambda: [123.675, 116.280, 103.530])
    pixel_std: list[float] = field(default_factory=lambda: [58.395, 57.120, 57.375])
    # Key naming of the official checkpoints for this backbone: detectron2 | timm | pvt
    checkpoint_layout: str = "timm"


@dataclass
class InputConfig:
    min_size_train: list[int] = field(
        default_factory=lambda: [416, 448, 480, 512, 544, 576, 608, 640]
    )
    max_size_train: int = 853
    min_size_test: int = 640
    max_size_test: int = 853
    flip_prob: float = 0.5
    crop_enabled: bool = False  # the "aug" variants
    crop_prob: float = 0.5
    crop_size: list[int] = field(default_factory=lambda: [384, 600])
    crop_resize_sizes: list[int] = field(default_factory=lambda: [400, 500, 600])
    # After the multi-scale resize, train on one random window of at most this many pixels a
    # side (0: whole images). Chosen for small objects (training/adapt.py); testing is unaffected.
    train_window: int = 0


@dataclass
class SolverConfig:
    batch_size: int = 64  # images per iteration over all processes
    lr: float = 5e-5
    weight_decay: float = 0.05
    weight_decay_norm: float = 0.0
    backbone_lr_multiplier: float = 1.0
    max_iter: int = 270000
    steps: list[int] = field(default_factory=lambda: [210000, 250000])
    gamma: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    amp: str = "none"  # none | fp16 | bf16
    clip_grad_norm: float = 0.0  # 0 disables clipping
    checkpoint_period: int = 5000
    eval_period: int = 0  # 0: only at the end


@dataclass
class LossConfig:
    class_weight: float = 2.0
    mask_bce_weight: float = 5.0
    dice_weight: float = 2.0
    objectness_weight: float = 1.0
    # > 0: each matched instance's activation maps are taught to put their mass on its object
    # (-log of the mass inside its mask); 0: official, the maps learn only through the masks
    iam_weight: float = 0.0
    # Target masks to the prediction's stride: bilinear (official) | area (each cell's covered
    # fraction; for objects a few cells wide, whose bilinear targets shift by up to a cell)
    target_resize: str = "bilinear"
    # > 0 (needs model.decoder.peak_anchors): CenterNet's focal loss of the centre heatmap
    centre_weight: float = 0.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    matcher_alpha: float = 0.8  # dice exponent
    matcher_beta: float = 0.2  # class-probability exponent
    # With query anchors, > 0: the cost is also multiplied by exp(-d^2)^matcher_anchor, d the
    # target's distance from the instance's anchor in anchor widths (0: official cost)
    matcher_anchor: float = 0.0


@dataclass
class TestConfig:
    cls_threshold: float = 0.005
    mask_threshold: float = 0.45
    max_detections: int = 100


@dataclass
class DataConfig:
    train: str | None = None  # DATA.yaml, a built-in name (coco_2017_train, demo)
    num_workers: int = 2
    filter_empty: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    test: TestConfig = field(default_factory=TestConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0
    name: str = "sparseinst"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- dict <-> dataclass


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _unknown_key_error(key: str, valid: list[str], where: str) -> UserError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{where}{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
    return UserError(f"unknown config key '{where}{key}'{hint}")


# Keys renamed since a release, as stored in checkpoints and exported models: old dotted key ->
# (new name, old value -> new value).
RENAMED_KEYS: dict[str, tuple[str, dict[str, str]]] = {
    "model.decoder.centre_prior_shape": ("object_shape", {"oriented": "elongated"}),
}


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys raise UserError with a suggestion;
    renamed keys (`RENAMED_KEYS`) are read under their new name."""
    if not isinstance(data, dict):
        raise UserError(f"config section '{where.rstrip('.') or '<root>'}' must be a mapping")
    kwargs: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if f"{where}{key}" in RENAMED_KEYS:
            key, values = RENAMED_KEYS[f"{where}{key}"]
            value = values.get(value, value) if isinstance(value, str) else value
        if key not in fields:
            raise _unknown_key_error(key, list(fields), where)
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            kwargs[key] = from_dict(type(default), value or {}, f"{where}{key}.")
        else:
            kwargs[key] = _coerce(value, default, f"{where}{key}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, key: str) -> Any:
    """Check a leaf value against the type of its default; ints are accepted for floats."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UserError(f"config key '{key}' expects true/false, got {value!r}")
        return value
    if isinstance(default, float) and not isinstance(value, bool):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"config key '{key}' expects float, got {value!r}") from None
    if isinstance(default, list):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise UserError(f"config key '{key}' expects a list, got {value!r}")
        return value
    if not isinstance(value, type(default)):
        raise UserError(f"config key '{key}' expects {type(default).__name__}, got {value!r}")
    return value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- files and the zoo


def zoo_dir() -> Path:
    """The model zoo folder: `$SPARSEINST_ZOO`, else the package's `zoo/` (in a checkout a link
    to the top-level `models/`, in a wheel a copy of it)."""
    env = os.environ.get("SPARSEINST_ZOO")
    return Path(env) if env else Path(__file__).parent / "zoo"


def zoo_names() -> list[str]:
    return sorted(p.stem for p in zoo_dir().glob("*.yaml") if not p.stem.startswith("_"))


def resolve_config_path(name_or_path: str | os.PathLike) -> Path:
    """A path to a YAML file, or a zoo name (`r50_giam` or `r50_giam.yaml`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    candidate = zoo_dir() / f"{stem}.yaml"
    if len(path.parts) == 1 and candidate.is_file():
        return candidate
    names = zoo_names()
    close = difflib.get_close_matches(stem, names, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; zoo names: {', '.join(names)}"
    raise UserError(f"config '{name_or_path}' is neither a file nor a zoo name{hint}")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(
            f"malformed YAML in {path}{where}: {getattr(exc, 'problem', exc)}"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot read config {path}: {exc.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a YAML mapping")
    return data


def load_yaml_tree(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config and merge its `_base_` chain (paths relative to the file)."""
    path = path.resolve()
    if path in _seen:
        raise UserError(f"config {path} inherits from itself through _base_")
    data = _read_yaml(path)
    base = data.pop("_base_", None) or data.pop("_BASE_", None)  # ours, detectron2's
    if base is None:
        return data
    base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
    if not base_path.is_file():
        base_path = resolve_config_path(base)
    return deep_merge(load_yaml_tree(base_path, _seen + (path,)), data)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`solver.lr=1e-4 model.num_classes=3` -> nested dict; values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not KEY=VALUE (for example solver.lr=1e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def override_keys(overrides: list[str]) -> set[str]:
    """The dotted keys that `overrides` set: `solver.lr=1e-4` -> {"solver.lr"}; a renamed key
    under its new name, as `from_dict` reads it."""
    def walk(tree: dict[str, Any], prefix: str) -> set[str]:
        keys: set[str] = set()
        for key, value in tree.items():
            if f"{prefix}{key}" in RENAMED_KEYS:
                key = RENAMED_KEYS[f"{prefix}{key}"][0]
            dotted = f"{prefix}{key}"
            keys |= walk(value, f"{dotted}.") if isinstance(value, dict) else {dotted}
        return keys
    return walk(parse_overrides(overrides), "")


def load_config(name_or_path: str | os.PathLike | None = None, overrides: list[str] = ()) -> Config:
    """Load a zoo name, our YAML or an official detectron2 YAML, then apply overrides."""
    data: dict[str, Any] = {}
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        data = load_yaml_tree(path)
        if "MODEL" in data or "INPUT" in data or "SOLVER" in data:
            from .d2_config import translate_detectron2

            data = translate_detectron2(data, source=path)
    if overrides:
        data = deep_merge(data, parse_overrides(list(overrides)))
    return from_dict(Config, data)


def config_from_dict(data: dict[str, Any]) -> Config:
    return from_dict(Config, data)


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def config_with_overrides(stored: dict[str, Any], overrides: list[str] = ()) -> Config:
    """A config saved in a checkpoint or an exported model, with KEY=VALUE overrides applied."""
    return from_dict(Config, deep_merge(stored, parse_overrides(list(overrides))))
