"""A synthetic dataset of rod-shaped cells in colonies (bacteria), one class.

Each grey image (288-352 px a side) holds 2-20 rods 7-16 px wide and 25-150 px long, straight
or bent, mostly in colonies where they touch side by side or end to end, as dividing bacteria
do. Half the images look like phase contrast (dark rods with a bright halo on grey, a faint
bright line where two rods touch), the others like fluorescence (bright rods on dark, dimmer
where they touch). Masks are the visible parts (compressed RLE; they never overlap). Same
on-disk format as the other synthetic datasets (see synthetic.py); the same parameters always
give the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from .imaging import illumination, smooth_noise
from .writer import RenderedObject, Renderer, write_dataset

RODS_VERSION = 1
CATEGORY = {"id": 1, "name": "rod", "supercategory": "cell"}
RODS_PER_IMAGE = (2, 20)
WIDTH = (7.0, 16.0)  # px
LENGTH = (25.0, 150.0)  # px, along the centre line, caps included
BENT_PROBABILITY = 0.35
MAX_BEND = math.radians(70)  # total turn of a bent rod's centre line
COLONY_PROBABILITY = 0.8  # a new rod is placed against an existing one, else anywhere
SIDE_BY_SIDE = 0.65  # of those: parallel next to it, else end to end
MAX_OVERLAP = 0.08  # of a new rod's pixels that may cover earlier rods
MIN_VISIBLE_PIXELS = 40
PHASE_CONTRAST_PROBABILITY = 0.5


@dataclass(frozen=True)
class RodsParams:
    num_train: int
    num_val: int
    size_range: tuple[int, int]
    seed: int
    version: int = RODS_VERSION


@dataclass
class _Rod:
    """A capsule around a centre line: centre (cx, cy), direction `angle`, `length`, `width`,
    `bend` (total turn of the centre line, radians)."""

    cx: float
    cy: float
    angle: float
    length: float
    width: float
    bend: float = 0.0

    def centre_line(self, samples: int = 24) -> np.ndarray:
        """[samples, 2] (x, y) points of the centre line, caps excluded."""
        core = max(self.length - self.width, 1.0)
        s = np.linspace(-core / 2, core / 2, samples)
        heading = self.angle + self.bend * s / core  # the direction turns evenly along it
        # integrate the heading from the middle outwards
        step = core / (samples - 1)
        dx, dy = np.cos(heading) * step, np.sin(heading) * step
        x, y = np.cumsum(dx) - dx[0], np.cumsum(dy) - dy[0]
        mid = samples // 2
        return np.stack([self.cx + x - x[mid], self.cy + y - y[mid]], axis=1)


def make_rods_dataset(
    root: str | Path, *, num_train: int = 16, num_val: int = 20,
    size_range: tuple[int, int] = (288, 352), seed: int = 0,
) -> Path:
    """Generate (or reuse) the rods dataset under `root`; returns the path of its data.yaml."""
    params = RodsParams(num_train, num_val, (int(size_range[0]), int(size_range[1])), seed)
    marker = asdict(params)
    marker["size_range"] = list(params.size_range)

    def renderer(tag: int) -> Renderer:
        return lambda i: render_rods_image(np.random.default_rng([seed, tag, i]),
                                           params.size_range)

    return write_dataset(
        root, marker="rods.json", params=marker, categories=[dict(CATEGORY)],
        splits={"train": (num_train, renderer(0)), "val": (num_val, renderer(1))},
    )


def render_rods_image(
    rng: np.random.Generator, size_range: tuple[int, int]
) -> tuple[np.ndarray, list[RenderedObject]]:
    """One grey image uint8 [H, W] and its rods (category id, visible mask [H, W], None)."""
    h, w = (int(s) for s in rng.integers(size_range[0], size_range[1] + 1, size=2))
    labels = _place_rods(rng, h, w)
    render = _phase_contrast if rng.random() < PHASE_CONTRAST_PROBABILITY else _fluorescence
    image = _finish(rng, render(rng, labels))
    objects = [(CATEGORY["id"], labels == k, None) for k in range(1, int(labels.max()) + 1)]
    return image, [o for o in objects if o[1].any()]


def _place_rods(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Label map int32 [h, w] (0 background, k the k-th rod, later ones on top)."""
    target = int(rng.integers(RODS_PER_IMAGE[0], RODS_PER_IMAGE[1] + 1))
    width = rng.uniform(*WIDTH)  # one strain per image: widths vary a little around it
    labels = np.zeros((h, w), np.int32)
    rods: list[_Rod] = []
    for _ in range(60 * target):
        if len(rods) == target:
            break
        rod = _sample_rod(rng, h, w, width, rods)
        mask = _rasterise(rod, h, w)
        covered = np.count_nonzero(labels[mask])
        inside = np.count_nonzero(mask)
        if inside < MIN_VISIBLE_PIXELS or covered > MAX_OVERLAP * inside:
            continue
        labels[mask] = len(rods) + 1
        rods.append(rod)
    _drop_fragments(labels)
    return labels


def _sample_rod(rng: np.random.Generator, h: int, w: int, width: float, rods: list[_Rod]) -> _Rod:
    length = float(np.clip(rng.lognormal(math.log(80), 0.35), *LENGTH))
    rod = _Rod(0.0, 0.0, rng.uniform(0, math.pi), length,
               float(np.clip(width * rng.uniform(0.85, 1.15), *WIDTH)))
    rod.length = max(rod.length, 1.8 * rod.width)
    if rng.random() < BENT_PROBABILITY:
        rod.bend = rng.uniform(-MAX_BEND, MAX_BEND)
    if not rods or rng.random() > COLONY_PROBABILITY:
        rod.cx, rod.cy = rng.uniform(0, w), rng.uniform(0, h)
        return rod
    other = rods[int(rng.integers(len(rods)))]
    along = np.array([math.cos(other.angle), math.sin(other.angle)])
    across = np.array([-along[1], along[0]])
    if rng.random() < SIDE_BY_SIDE:  # parallel, touching along its side
        rod.angle = other.angle + rng.normal(0, 0.12)
        offset = (other.width + rod.width) / 2 + rng.uniform(-0.5, 1.5)
        shift = rng.uniform(-0.45, 0.45) * other.length
        centre = np.array([other.cx, other.cy]) + across * offset * rng.choice([-1, 1]) \
            + along * shift
    else:  # end to end, as after a division
        rod.angle = other.angle + rng.normal(0, 0.25)
        reach = (other.length + rod.length) / 2 + rng.uniform(0.0, 3.0)
        centre = np.array([other.cx, other.cy]) + along * reach * rng.choice([-1, 1])
    rod.cx, rod.cy = float(centre[0]), float(centre[1])
    return rod


def _rasterise(rod: _Rod, h: int, w: int) -> np.ndarray:
    """bool [h, w]: pixels within width/2 of the rod's centre line (a capsule), clipped."""
    line = rod.centre_line()
    pad = rod.width
    x0, y0 = (int(math.floor(v - pad)) for v in line.min(axis=0))
    x1, y1 = (int(math.ceil(v + pad)) + 1 for v in line.max(axis=0))
    canvas = np.full((y1 - y0, x1 - x0), 255, np.uint8)
    pts = np.round((line - [x0, y0]) * 16).astype(np.int32)
    cv2.polylines(canvas, [pts], False, 0, thickness=1, lineType=cv2.LINE_8, shift=4)
    inside = cv2.distanceTransform(canvas, cv2.DIST_L2, 5) <= rod.width / 2
    mask = np.zeros((h, w), bool)
    cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    if cy1 > cy0 and cx1 > cx0:
        mask[cy0:cy1, cx0:cx1] = inside[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    return mask


def _drop_fragments(labels: np.ndarray) -> None:
    """Unlabel visible pieces smaller than MIN_VISIBLE_PIXELS (a rod covered or cut off)."""
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        view = labels[box]
        comp, count = ndimage.label(view == k)
        sizes = np.bincount(comp.ravel())
        for c in range(1, count + 1):
            if sizes[c] < MIN_VISIBLE_PIXELS:
                view[comp == c] = 0


def _touching(labels: np.ndarray) -> np.ndarray:
    """bool [h, w]: rod pixels with a pixel of another rod among their 8 neighbours."""
    inside = labels > 0
    larger = ndimage.grey_dilation(labels, size=3) > labels
    smaller = ndimage.grey_erosion(np.where(inside, labels, labels.max() + 1), size=3) < labels
    return inside & (larger | smaller)


def _phase_contrast(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """float [h, w]: grey background, dark rods, a bright halo outside, bright seams."""
    background = rng.uniform(110, 160)
    contrast = rng.uniform(45, 90)
    inside = labels > 0
    outside_dist = ndimage.distance_transform_edt(~inside)
    halo = contrast * rng.uniform(0.3, 0.7) * np.exp(-outside_dist / rng.uniform(1.5, 3.5))
    halo[inside] = 0
    depth = rng.uniform(0.5, 1.0, size=int(labels.max()) + 1)
    image = background + halo - contrast * depth[labels] * inside
    image += contrast * rng.uniform(0.0, 0.6) * _touching(labels)
    return image


def _fluorescence(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """float [h, w]: dark background, bright rods (brighter along their middle), dim seams."""
    background = rng.uniform(20, 50)
    contrast = rng.uniform(70, 140)
    inside = labels > 0
    level = contrast * rng.lognormal(0.0, 0.2, size=int(labels.max()) + 1)
    profile = np.ones(labels.shape)
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        own = np.pad(labels[box] == k, 1)
        edge = ndimage.distance_transform_edt(own)[1:-1, 1:-1]
        rel = edge / max(float(edge.max()), 1.0)
        profile[box][own[1:-1, 1:-1]] = (1 - 0.5 * (1 - rel) ** 2)[own[1:-1, 1:-1]]
    image = background + level[labels] * profile * inside
    image -= contrast * rng.uniform(0.0, 0.4) * _touching(labels)
    return image


def _finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Blur, uneven light and noise; uint8."""
    h, w = image.shape
    image = image * (1 + rng.uniform(0.03, 0.1) * smooth_noise(rng, h, w, rng.uniform(0.8, 2)))
    image = ndimage.gaussian_filter(image, rng.uniform(0.6, 1.3)) * illumination(rng, h, w)
    sigma = np.sqrt(rng.uniform(3, 8) ** 2 + rng.uniform(0.1, 0.4) * np.maximum(image, 0))
    image += sigma * rng.standard_normal((h, w))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
