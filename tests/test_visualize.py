"""Drawing instances within their boxes gives the pixels of the plain full-image drawing."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from sparseinst_cli.media import visualize
from sparseinst_cli.media.visualize import draw_instances, instance_colors, mask_boxes
from sparseinst_cli.postprocess import Instances


def full_image_drawing(image, instances, names, alpha=0.45):
    """Every step over the whole image: blend, outline, label at the mask's top-left pixel."""
    canvas = image.astype(np.float32)
    masks = instances.masks.numpy()
    colors = instance_colors(len(masks))
    for mask, color in zip(masks, colors):
        canvas[mask] = canvas[mask] * (1 - alpha) + np.array(color, np.float32) * alpha
    out = canvas.clip(0, 255).astype(np.uint8)
    thickness = max(1, round(max(image.shape[:2]) / 400))
    for mask, color in zip(masks, colors):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, color, thickness)
    for mask, color, label, score in zip(masks, colors, instances.labels, instances.scores):
        ys, xs = np.nonzero(mask)
        if len(xs):
            visualize._label(out, f"{names[int(label)]} {float(score):.2f}",
                             (int(xs.min()), int(ys.min())), color)
    return out


def random_instances(h: int, w: int, n: int, seed: int = 0) -> Instances:
    """Overlapping discs and rings, one touching each image edge, one empty mask."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(masks[i], centre, int(rng.integers(2, 40)), 1, -1 if i % 3 else 4)
    masks[0, :, : w // 5] = 1  # left edge, whole height
    masks[1, h - 3:, w // 2:] = 1  # bottom-right corner
    masks[2] = 0
    return Instances(masks=torch.from_numpy(masks.astype(bool)),
                     scores=torch.from_numpy(rng.random(n).astype(np.float32)),
                     labels=torch.from_numpy(rng.integers(0, 2, n)))


def test_drawing_in_boxes_equals_the_full_image_drawing():
    image = np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    instances = random_instances(240, 320, 40)
    expected = full_image_drawing(image, instances, ["cell", "rod"])
    np.testing.assert_array_equal(draw_instances(image, instances, ["cell", "rod"]), expected)
    assert (expected != image).any(2).mean() > 0.3  # the drawing did draw
    none = Instances(masks=torch.zeros(0, 240, 320, dtype=torch.bool),
                     scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.long))
    np.testing.assert_array_equal(draw_instances(image, none, ["cell"]), image)


def test_mask_boxes_are_end_exclusive_and_empty_masks_get_an_empty_box():
    masks = np.zeros((3, 6, 8), bool)
    masks[0, 1:4, 2:7] = True
    masks[1, 5, 0] = True
    assert mask_boxes(masks) == [(2, 1, 7, 4), (0, 5, 1, 6), (0, 0, 0, 0)]
