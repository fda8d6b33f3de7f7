"""Augmentation geometry: size rule, flip, polygon resize, crop, training window."""

import numpy as np
import pytest
import torch
from PIL import Image

from sparseinst_cli.data.transforms import (
    PAD_MULTIPLE,
    Instance,
    TransformConfig,
    apply_train_transforms,
    clip_polygon,
    crop,
    hflip,
    polygons_to_mask,
    random_crop_window,
    rasterize,
    resize,
    resize_image,
    shortest_edge_size,
)
from sparseinst_cli.preprocess import pad_batch


def square(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


@pytest.mark.parametrize(
    ("hw", "short", "max_size", "expected"),
    [
        ((333, 500), 320, 533, (320, 480)),  # 500 * 320/333 = 480.48 -> 480
        ((500, 333), 320, 533, (480, 320)),
        ((100, 1000), 320, 533, (53, 533)),  # max_size binds: 100 * 0.533 = 53.3
        ((480, 640), 640, 853, (640, 853)),  # 853.33 > 853 binds, 640 stays
        ((427, 640), 608, 853, (569, 853)),  # 640*608/427 = 911.3 > 853 -> 569.05
        ((200, 200), 416, None, (416, 416)),
    ],
)
def test_shortest_edge_size(hw, short, max_size, expected):
    assert shortest_edge_size(*hw, short, max_size) == expected


def test_resize_image_is_pil_bilinear():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    out = resize_image(img, (20, 30))
    ref = np.asarray(Image.fromarray(img).resize((30, 20), Image.BILINEAR))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, ref)
    assert resize_image(img, (40, 60)) is img


def test_hflip_moves_mask_and_polygon():
    img = np.zeros((10, 20, 3), np.uint8)
    img[:, 0] = 255
    mask = np.zeros((10, 20), bool)
    mask[2:5, 1:4] = True
    poly = square(1, 2, 4, 5)
    out_img, out = hflip(img, [Instance(0, mask=mask), Instance(1, polygons=[poly])])
    assert out_img[:, -1].min() == 255 and out_img[:, 0].max() == 0
    expected = np.zeros((10, 20), bool)
    expected[2:5, 16:19] = True
    labels, masks = rasterize(out, 10, 20)
    assert labels.tolist() == [0, 1]
    np.testing.assert_array_equal(masks[0], expected)
    np.testing.assert_array_equal(masks[1], expected)  # polygon x -> 20 - x


def test_polygon_resize_then_rasterise():
    img = np.zeros((10, 10, 3), np.uint8)
    _, out = resize(img, [Instance(2, polygons=[square(2, 2, 6, 6)])], (20, 20))
    np.testing.assert_allclose(out[0].polygons[0], square(4, 4, 12, 12))
    labels, masks = rasterize(out, 20, 20)
    expected = np.zeros((20, 20), bool)
    expected[4:12, 4:12] = True
    assert labels.tolist() == [2]
    np.testing.assert_array_equal(masks[0], expected)


def test_bitmask_resize_is_nearest():
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    _, out = resize(np.zeros((4, 4, 3), np.uint8), [Instance(0, mask=mask)], (8, 8))
    expected = np.zeros((8, 8), bool)
    expected[2:6, 2:6] = True
    np.testing.assert_array_equal(out[0].mask, expected)


def test_crop_drops_empty_instances():
    img = np.zeros((40, 40, 3), np.uint8)
    far_mask = np.zeros((40, 40), bool)
    far_mask[30:35, 30:35] = True
    instances = [
        Instance(0, polygons=[square(2, 2, 10, 10)]),  # inside the window
        Instance(1, polygons=[square(25, 25, 38, 38)]),  # outside: dropped
        Instance(2, mask=far_mask),  # outside: dropped
        Instance(3, polygons=[square(15, 2, 25, 8)]),  # half inside: clipped
    ]
    out_img, out = crop(img, instances, 0, 0, 20, 20)
    assert out_img.shape == (20, 20, 3)
    labels, masks = rasterize(out, 20, 20)
    assert labels.tolist() == [0, 3]
    assert masks.shape == (2, 20, 20)
    assert masks[1].sum() == 5 * 6 and masks[1][2:8, 15:20].all()


def test_crop_polygon_matches_cropped_raster():
    poly = np.array([[25.3, 9.8], [60.7, 23.1], [55.2, 70.9], [11.6, 50.3]])
    big = polygons_to_mask([poly], 100, 100)
    _, out = crop(np.zeros((100, 100, 3), np.uint8), [Instance(0, polygons=[poly])], 20, 20, 40, 40)
    _, masks = rasterize(out, 40, 40)
    ref = big[20:60, 20:60]
    # clipping adds vertices on the window edge; pycocotools snaps vertices to 1/5 px, so a
    # few pixels whose centres lie on an edge may flip
    assert (masks[0] != ref).sum() <= 8
    assert (masks[0] & ref).sum() / (masks[0] | ref).sum() > 0.99


def test_clip_polygon_outside_is_empty():
    assert len(clip_polygon(square(50, 50, 60, 60), 20, 20)) == 0
    clipped = clip_polygon(square(-5, -5, 5, 5), 20, 20)
    assert clipped.min() >= 0 and clipped.max() <= 5


def test_apply_train_transforms_flip_and_resize():
    img = np.zeros((30, 60, 3), np.uint8)
    img[:, :10] = 200
    cfg = TransformConfig(min_sizes=(60,), max_size=1000, flip_prob=1.0)
    inst = [Instance(0, polygons=[square(0, 0, 10, 30)])]
    out, labels, masks = apply_train_transforms(img, inst, cfg, np.random.default_rng(0))
    assert out.shape == (60, 120, 3) and masks.shape == (1, 60, 120)
    assert out[:, -19:].min() == 200 and out[:, :-21].max() == 0  # bilinear blends one column
    assert masks[0][:, -20:].all() and not masks[0][:, :-20].any()


def test_apply_train_transforms_crop_branch_is_deterministic():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    inst = [Instance(i % 3, polygons=[square(10 * i, 8 * i, 10 * i + 30, 8 * i + 25)])
            for i in range(10)]
    cfg = TransformConfig(min_sizes=(64, 96), max_size=200, crop_enabled=True, crop_prob=1.0,
                          crop_size=(30, 60), crop_resize_sizes=(100, 120))
    runs = [apply_train_transforms(img, inst, cfg, np.random.default_rng(7)) for _ in range(2)]
    for a, b in zip(runs[0], runs[1], strict=True):
        np.testing.assert_array_equal(a, b)
    out, labels, masks = runs[0]
    assert min(out.shape[:2]) in (64, 96) and masks.shape[1:] == out.shape[:2]
    assert len(labels) == len(masks) and masks.reshape(len(masks), -1).any(1).all()


def test_random_window_stays_inside_and_covers_every_position():
    """A fixed-size crop (the training window) is placed uniformly and stays inside."""
    rng = np.random.default_rng(0)
    windows = [random_crop_window(50, 70, (32, 32), rng) for _ in range(2000)]
    assert all(0 <= y0 <= 18 and 0 <= x0 <= 38 and (h, w) == (32, 32) for y0, x0, h, w in windows)
    assert {y0 for y0, *_ in windows} == set(range(19))  # uniform: both ends are reached
    assert {x0 for _, x0, *_ in windows} == set(range(39))
    assert random_crop_window(20, 70, (32, 32), rng)[::2] == (0, 20)  # a smaller side stays whole


def test_training_window_cuts_image_and_masks_alike_after_the_resize():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(100, 120, 3), dtype=np.uint8)
    inst = [Instance(i % 2, polygons=[square(24 * i, 20 * j, 24 * i + 12, 20 * j + 12)])
            for i in range(5) for j in range(5)]  # a grid: any window holds some, not all
    whole_cfg = TransformConfig(min_sizes=(200,), max_size=1000, flip_prob=0.0)
    window_cfg = TransformConfig(min_sizes=(200,), max_size=1000, flip_prob=0.0, window=64)
    whole, whole_labels, whole_masks = apply_train_transforms(
        img, inst, whole_cfg, np.random.default_rng(5))
    out, labels, masks = apply_train_transforms(img, inst, window_cfg, np.random.default_rng(5))
    assert whole.shape == (200, 240, 3)
    wh, ww = out.shape[:2]
    assert 64 - PAD_MULTIPLE < wh <= 64 and 64 - PAD_MULTIPLE < ww <= 64
    # The window is a piece of the resized image, found where it matches exactly.
    hits = [(y, x) for y in range(200 - wh + 1) for x in range(240 - ww + 1)
            if np.array_equal(whole[y:y + wh, x:x + ww], out)]
    assert len(hits) == 1
    y, x = hits[0]
    cut = whole_masks[:, y:y + wh, x:x + ww]
    kept = cut.reshape(len(cut), -1).any(1)  # objects the window misses are dropped
    assert 0 < kept.sum() < len(inst)
    np.testing.assert_array_equal(masks, cut[kept])
    assert labels.tolist() == whole_labels[kept].tolist()


def test_training_windows_leave_room_for_the_padding_inference_adds():
    """Windows fall short of their size by 0-31 px a side, so that padded batches hold the
    pixel-mean padding inference adds up to a multiple of 32 (a model that never saw it fires
    along its edge)."""
    img = np.zeros((400, 500, 3), np.uint8)
    cfg = TransformConfig(min_sizes=(400,), max_size=1000, flip_prob=0.0, window=320)
    rng = np.random.default_rng(0)
    shapes = [apply_train_transforms(img, [], cfg, rng)[0].shape[:2] for _ in range(400)]
    heights, widths = {h for h, _ in shapes}, {w for _, w in shapes}
    assert heights == widths == set(range(320 - PAD_MULTIPLE + 1, 321))
    batch = pad_batch([torch.zeros(3, h, w) for h, w in shapes[:4]], [0.0, 0.0, 0.0])
    assert batch.shape[-2:] == (320, 320)  # the same shape as whole windows
