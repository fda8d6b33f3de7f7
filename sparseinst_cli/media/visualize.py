"""Draw instances on an image: a colour each, translucent mask, outline, label and score."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from ..postprocess import Instances


def instance_colors(n: int) -> list[tuple[int, int, int]]:
    """`n` well-separated RGB colours (golden-ratio hues), the same for every run."""
    colors = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 1.0)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


def draw_instances(
    image: np.ndarray, instances: Instances, class_names: list[str], alpha: float = 0.45
) -> np.ndarray:
    """RGB uint8 [H, W, 3] + instances -> a new RGB uint8 image with the overlays.

    Each mask is drawn within its box (found for all masks in one pass): a frame's hundred
    instances cost a few milliseconds instead of a few full-image passes each.
    """
    canvas = image.astype(np.float32)
    masks = instances.masks.numpy()
    colors = instance_colors(len(masks))
    boxes = mask_boxes(masks)
    for mask, color, (x0, y0, x1, y1) in zip(masks, colors, boxes):
        if x1 > x0:
            region, inside = canvas[y0:y1, x0:x1], mask[y0:y1, x0:x1]
            region[inside] = region[inside] * (1 - alpha) + np.array(color, np.float32) * alpha
    out = canvas.clip(0, 255).astype(np.uint8)
    thickness = max(1, round(max(image.shape[:2]) / 400))
    h, w = masks.shape[1:] if len(masks) else (0, 0)
    for mask, color, (x0, y0, x1, y1) in zip(masks, colors, boxes):
        if x1 > x0:  # a pixel of margin, so the crop's edge is the image's edge only where it is
            x0m, y0m = max(x0 - 1, 0), max(y0 - 1, 0)
            crop = mask[y0m:min(y1 + 1, h), x0m:min(x1 + 1, w)].astype(np.uint8)
            contours, _ = cv2.findContours(
                crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x0m, y0m)
            )
            cv2.drawContours(out, contours, -1, color, thickness)
    for color, label, score, (x0, y0, x1, _) in zip(colors, instances.labels, instances.scores,
                                                     boxes):
        if x1 > x0:
            _label(out, f"{class_names[int(label)]} {float(score):.2f}", (x0, y0), color)
    return out


def mask_boxes(masks: np.ndarray) -> list[tuple[int, int, int, int]]:
    """bool [n, H, W] -> each mask's (x0, y0, x1, y1), end exclusive; (0, 0, 0, 0) if empty."""
    rows, cols = masks.any(2), masks.any(1)  # [n, H], [n, W]
    boxes = []
    for row, col in zip(rows, cols):
        ys, xs = np.flatnonzero(row), np.flatnonzero(col)
        boxes.append((int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1) if len(xs)
                     else (0, 0, 0, 0))
    return boxes


def _label(
    image: np.ndarray, text: str, corner: tuple[int, int], color: tuple[int, int, int]
) -> None:
    scale = max(0.35, max(image.shape[:2]) / 1400)
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = corner
    y = max(y, h + base)
    cv2.rectangle(image, (x, y - h - base), (x + w, y), color, -1)
    cv2.putText(
        image, text, (x, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA
    )


def instance_label_map(instances: Instances, hw: tuple[int, int]) -> np.ndarray:
    """uint16 [H, W]: 0 background, i+1 where instance i is; higher scores drawn on top."""
    masks = instances.masks.numpy()
    label_map = np.zeros(hw, np.uint16)
    order = np.argsort(instances.scores.numpy(), kind="stable")
    for i in order:
        label_map[masks[i]] = i + 1
    return label_map
