"""The training split shapes the config before a run: enough queries for its densest image,
input sizes that keep small objects at their native size, training windows for small objects, a
location prior and a peak window shaped for elongated objects, a warning for objects too thin for
the mask stride.
An object's size here is its width (the minor axis of its mask): a 12 x 80 px rod is as small
for the mask branch as a 12 px nucleus. Pure functions of (config, statistics, what
the user set); the choices are saved in the run's config.yaml, so eval and predict use them too.
"""

from __future__ import annotations

import math

from ..config import Config, DecoderConfig
from ..data.stats import SplitStats

QUERY_HEADROOM = 1.5  # queries per instance of the densest image
QUERY_MULTIPLE = 8
SMALL_OBJECT_SIZE = 32  # COCO "small": under 32 x 32 pixels
# Multi-scale training from the native size up: a small object a few mask cells wide gets a
# boundary of its own (crowded stand-in, 400 iterations: 34.0 AP at 0.875-1.25x, tested at
# 1.25x; 40.2 at 1.0-1.5x, tested at 1.5x; an iteration costs 1.45x as much).
TRAIN_SCALES = (1.0, 1.125, 1.25, 1.5)
RESOLVABLE_CELLS = 2  # an object narrower than two mask cells has no boundary of its own
# Small objects train on random windows of the resized images: an iteration costs a fraction,
# every window still holds many objects at full resolution, and its shape is always the same
# (crowded stand-in, 12 minutes on one core: 46.7 AP with whole images, 531 iterations; 53.6 with
# 320 px windows, 1,469 iterations).
TRAIN_WINDOW = 320
# Objects whose median major / minor axis is at least this are elongated: the location prior
# gets an axis of its own (a W x L rod is L / W; a nucleus about 1.2)
ELONGATED = 2.0


def queries_for(max_instances: int) -> int:
    """Query count for a densest image of `max_instances`: 1.5x, up to a multiple of 8."""
    return QUERY_MULTIPLE * math.ceil(QUERY_HEADROOM * max_instances / QUERY_MULTIPLE)


def adapt_to_data(cfg: Config, stats: SplitStats, user_keys: set[str]) -> list[str]:
    """Adjust `cfg` in place for the split; returns one notice per change or warning.

    `user_keys` are the dotted keys set on the command line (`model.decoder.num_masks`, ...):
    those are kept as given.
    """
    if stats.num_images == 0:
        return []
    notices = _queries(cfg, stats, user_keys)
    notices += _input_sizes(cfg, stats, user_keys)
    notices += _train_window(cfg, stats, user_keys)
    notices += _object_shape(cfg, stats, user_keys)
    notices += _peak_window(cfg, stats, user_keys)
    notices += _mask_stride(cfg, stats)
    return notices


def _queries(cfg: Config, stats: SplitStats, user_keys: set[str]) -> list[str]:
    decoder = cfg.model.decoder
    densest = stats.max_instances
    if densest <= decoder.num_masks:
        return []
    if "model.decoder.num_masks" in user_keys:
        return [
            f"warning: the densest training image has {densest} instances but "
            f"model.decoder.num_masks={decoder.num_masks}: at most {decoder.num_masks} objects "
            f"per image can be found (about {queries_for(densest)} would fit this data)"
        ]
    wanted = queries_for(densest)
    message = (f"the densest training image has {densest} instances: model.decoder.num_masks "
               f"{decoder.num_masks} -> {wanted}")
    decoder.num_masks = wanted
    cfg.test.max_detections = max(cfg.test.max_detections, wanted)
    return [message]


def _input_sizes(cfg: Config, stats: SplitStats, user_keys: set[str]) -> list[str]:
    """Small objects: train and test at (around) the native size instead of shrinking."""
    if not stats.object_width < SMALL_OBJECT_SIZE:
        return []
    if any(key.startswith("input.m") for key in user_keys):  # min_size_* / max_size_* given
        return []
    inputs = cfg.input
    native = stats.median_short_side
    if max(inputs.min_size_train) >= native and inputs.min_size_test >= native:
        return []
    inputs.min_size_train = [_round16(native * s) for s in TRAIN_SCALES]
    # Small objects are found best at the largest scale they were trained at (crowded stand-in,
    # trained at 0.875-1.25x: 47.3 AP tested at the native size, 52.3 at 1.25x, 49.4 at 1.5x).
    inputs.min_size_test = inputs.min_size_train[-1]
    long_side = math.ceil(stats.max_long_side * TRAIN_SCALES[-1])
    inputs.max_size_train = max(inputs.max_size_train, long_side)
    inputs.max_size_test = max(inputs.max_size_test, long_side)
    return [
        f"objects are small (median width {stats.object_width:.0f} px): inputs around their "
        f"native size instead of shrinking them: input.min_size_train={inputs.min_size_train}, "
        f"input.min_size_test={inputs.min_size_test} (the largest training scale)"
    ]


def _train_window(cfg: Config, stats: SplitStats, user_keys: set[str]) -> list[str]:
    """Small objects: train on windows of the resized images rather than whole images."""
    inputs = cfg.input
    if not stats.object_width < SMALL_OBJECT_SIZE or "input.train_window" in user_keys:
        return []
    if inputs.train_window or max(inputs.min_size_train) <= TRAIN_WINDOW:
        return []
    inputs.train_window = TRAIN_WINDOW
    return [
        f"objects are small: training on random {TRAIN_WINDOW} px windows of the resized images "
        f"(input.train_window={TRAIN_WINDOW}; 0 trains on whole images), many more iterations in "
        "the same time; testing uses whole images"
    ]


def _object_shape(cfg: Config, stats: SplitStats, user_keys: set[str]) -> list[str]:
    """Elongated objects: a location prior and centre targets long along each object's axis,
    short across it."""
    decoder = cfg.model.decoder
    if not decoder.centre_prior or "model.decoder.object_shape" in user_keys:
        return []
    if not stats.median_elongation >= ELONGATED or decoder.object_shape == "elongated":
        return []
    decoder.object_shape = "elongated"
    return [
        f"objects are elongated (median length / width {stats.median_elongation:.1f}): the "
        "location prior and the centre targets follow each object's axis "
        "(model.decoder.object_shape=elongated)"
    ]


def _peak_window(cfg: Config, stats: SplitStats, user_keys: set[str]) -> list[str]:
    """Elongated objects: peaks must top a wider square, so that one rod's long heatmap ridge
    gives one anchor instead of several along it (rods stand-in, one model scored with windows
    of 3, 5, 7, 9 cells: 13.0, 15.8, 17.3, 17.4 AP; trained with 7: 19.0). The widest square
    that cannot hold the centre of a touching neighbour as wide as the median object: half its
    side under the width over sqrt(2), at the test scale, in heatmap cells (mask stride). Round
    objects keep the default."""
    decoder = cfg.model.decoder
    if not decoder.peak_anchors or decoder.object_shape != "elongated":
        return []
    if "model.decoder.peak_window" in user_keys or decoder.peak_window != DecoderConfig.peak_window:
        return []
    test_scale = cfg.input.min_size_test / stats.median_short_side
    width_cells = stats.object_width * test_scale / decoder.mask_stride
    if not math.isfinite(width_cells):  # no usable masks to measure
        return []
    window = 2 * max(1, math.floor(width_cells / math.sqrt(2))) + 1
    if window == decoder.peak_window:
        return []
    decoder.peak_window = window
    return [
        f"objects are elongated: a heatmap peak must be the highest in {window}x{window} cells "
        f"(model.decoder.peak_window={window}), one anchor per object rather than several along it"
    ]


def _mask_stride(cfg: Config, stats: SplitStats) -> list[str]:
    stride = cfg.model.decoder.mask_stride
    if not stats.object_width < RESOLVABLE_CELLS * stride:
        return []
    hint = "" if stride == 4 else "; model.decoder.mask_stride=4 (the `small` config) resolves them"
    return [
        f"warning: most objects ({stats.object_width:.0f} px median width) are narrower than "
        f"{RESOLVABLE_CELLS} cells of the mask branch (stride {stride}): their masks will be "
        f"coarse{hint}"
    ]


def _round16(x: float) -> int:
    return max(32, 16 * round(x / 16))
