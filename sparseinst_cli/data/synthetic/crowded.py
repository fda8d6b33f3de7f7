"""A synthetic crowded small-object dataset that looks like fluorescence nuclei, one class.

Each grey image (320-400 px a side, sizes vary) holds 30-80 nuclei of 8-30 px: irregular,
some elongated, most in clusters where they touch or partly overlap. A later nucleus covers an
earlier one and every mask is the visible part (compressed RLE; masks never overlap). Nuclei
vary in brightness (some are dim), carry a chromatin-like texture and sometimes a dome profile;
the image is blurred, unevenly lit and noisy. Touching nuclei of similar brightness are
separable only by their outlines, as in real data. Same on-disk format as the demo dataset
(see synthetic.py); the same parameters always give the same bytes.
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

CROWDED_VERSION = 1
CATEGORY = {"id": 1, "name": "nucleus", "supercategory": "cell"}
OBJECTS_PER_IMAGE = (30, 80)
MAX_DIAMETER = 30.0  # px, longest extent of a whole nucleus
MIN_DIAMETER = 8.0  # px, of the unperturbed major axis
MIN_MINOR_RADIUS = 3.0
MIN_VISIBLE_PIXELS = 20  # smaller leftovers of occluded nuclei are dropped
MIN_VISIBLE_FRACTION = 0.6  # of the in-image area, each nucleus keeps this much unoccluded
MIN_INSIDE_FRACTION = 0.3  # of the whole area, a nucleus cut by the border keeps this much
MAX_WOBBLE = 0.1  # total amplitude of the outline's radial harmonics
NEAR_PROBABILITY = 0.6  # a new nucleus is placed against an existing one, else anywhere
DIM_PROBABILITY = 0.15
SUBPIXEL_BITS = 4  # cv2.fillPoly fixed-point precision


@dataclass(frozen=True)
class CrowdedParams:
    num_train: int
    num_val: int
    size_range: tuple[int, int]
    seed: int
    version: int = CROWDED_VERSION


@dataclass
class _Nucleus:
    """One whole nucleus: an ellipse (semi-axes a >= b, angle) with a wobbly outline."""

    cx: float
    cy: float
    a: float
    b: float
    angle: float
    y0: int = 0  # top-left of `mask` in the image
    x0: int = 0
    mask: np.ndarray | None = None  # bool [h, w]: the whole shape clipped to the image
    inside: int = 0  # pixels of the whole shape inside the image

    def radius_towards(self, phi: float) -> float:
        """Distance from the centre to the (smooth) ellipse outline in direction phi."""
        t = phi - self.angle
        return self.a * self.b / math.hypot(self.b * math.cos(t), self.a * math.sin(t))


def make_crowded_dataset(
    root: str | Path, *, num_train: int = 100, num_val: int = 40,
    size_range: tuple[int, int] = (320, 400), seed: int = 0,
) -> Path:
    """Generate (or reuse) the crowded dataset under `root`; returns the path of its data.yaml.

    Image sides are drawn from size_range (inclusive). An existing dataset is reused when its
    parameters match.
    """
    params = CrowdedParams(num_train, num_val, (int(size_range[0]), int(size_range[1])), seed)
    marker = asdict(params)
    marker["size_range"] = list(params.size_range)

    def renderer(tag: int) -> Renderer:
        return lambda i: render_image(np.random.default_rng([seed, tag, i]), params.size_range)

    return write_dataset(
        root, marker="crowded.json", params=marker, categories=[dict(CATEGORY)],
        splits={"train": (num_train, renderer(0)), "val": (num_val, renderer(1))},
    )


def render_image(
    rng: np.random.Generator, size_range: tuple[int, int]
) -> tuple[np.ndarray, list[RenderedObject]]:
    """One grey image uint8 [H, W] and its nuclei (category id, visible mask [H, W], None)."""
    h, w = (int(s) for s in rng.integers(size_range[0], size_range[1] + 1, size=2))
    labels = _place_nuclei(rng, h, w)
    image = _render(rng, labels)
    objects = [(CATEGORY["id"], labels == k, None) for k in range(1, int(labels.max()) + 1)]
    return image, [o for o in objects if o[1].any()]


def _place_nuclei(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Label map int32 [h, w] (0 background, k the k-th nucleus, later ones on top)."""
    target = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
    mean_diameter = rng.uniform(12.0, 22.0)  # the magnification of this image
    labels = np.zeros((h, w), np.int32)
    nuclei: list[_Nucleus] = []
    for _ in range(40 * target):
        if len(nuclei) == target:
            break
        n = _sample_nucleus(rng, h, w, mean_diameter, nuclei)
        if _fits(n, labels, nuclei):
            view = labels[n.y0:n.y0 + n.mask.shape[0], n.x0:n.x0 + n.mask.shape[1]]
            view[n.mask] = len(nuclei) + 1
            nuclei.append(n)
    _drop_fragments(labels, nuclei)
    return labels


def _sample_nucleus(
    rng: np.random.Generator, h: int, w: int, mean_diameter: float, nuclei: list[_Nucleus]
) -> _Nucleus:
    """A random nucleus, rasterised; usually touching or overlapping an existing one."""
    top = MAX_DIAMETER / (1 + MAX_WOBBLE)
    major = float(np.clip(mean_diameter * rng.lognormal(0.0, 0.25), MIN_DIAMETER, top))
    aspect = rng.uniform(1.6, 2.4) if rng.random() < 0.15 else 1.0 + rng.exponential(0.15)
    a = major / 2
    n = _Nucleus(0.0, 0.0, a, max(a / aspect, MIN_MINOR_RADIUS), rng.uniform(0, math.pi))
    if nuclei and rng.random() < NEAR_PROBABILITY:
        anchor = nuclei[int(rng.integers(len(nuclei)))]
        phi = rng.uniform(0, 2 * math.pi)
        reach = (anchor.radius_towards(phi) + n.radius_towards(phi + math.pi)) \
            * rng.uniform(0.72, 1.08)
        n.cx, n.cy = anchor.cx + reach * math.cos(phi), anchor.cy + reach * math.sin(phi)
    else:
        n.cx, n.cy = rng.uniform(-2, w + 2), rng.uniform(-2, h + 2)
    _rasterise(n, _outline(rng, n), h, w)
    return n


def _outline(rng: np.random.Generator, n: _Nucleus) -> np.ndarray:
    """Vertices [K, 2] (x, y): the ellipse with radial harmonics 2-4 (a lumpy, dented outline)."""
    t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    amps = rng.dirichlet(np.ones(3)) * rng.uniform(0.02, MAX_WOBBLE)
    radial = 1 + sum(amp * np.cos(k * t + rng.uniform(0, 2 * math.pi))
                     for k, amp in zip((2, 3, 4), amps))
    x, y = n.a * radial * np.cos(t), n.b * radial * np.sin(t)
    c, s = math.cos(n.angle), math.sin(n.angle)
    return np.stack([n.cx + c * x - s * y, n.cy + s * x + c * y], axis=1)


def _rasterise(n: _Nucleus, poly: np.ndarray, h: int, w: int) -> None:
    """Fill n.mask (clipped to the image), n.y0/x0 and n.inside from the outline `poly`."""
    x0, y0 = (int(math.floor(v)) - 1 for v in poly.min(axis=0))
    x1, y1 = (int(math.ceil(v)) + 2 for v in poly.max(axis=0))
    full = np.zeros((y1 - y0, x1 - x0), np.uint8)
    pts = np.round((poly - [x0, y0]) * (1 << SUBPIXEL_BITS)).astype(np.int32)
    cv2.fillPoly(full, [pts], 1, lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
    cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    whole = int(full.sum())
    n.y0, n.x0 = cy0, cx0
    n.mask = full[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0].astype(bool) if cy1 > cy0 and \
        cx1 > cx0 else np.zeros((0, 0), bool)
    inside = int(n.mask.sum())
    n.inside = inside if inside >= max(MIN_VISIBLE_PIXELS, MIN_INSIDE_FRACTION * whole) else 0


def _fits(n: _Nucleus, labels: np.ndarray, nuclei: list[_Nucleus]) -> bool:
    """Whether n may go on top: big enough inside the image, and every nucleus it covers keeps
    a main visible piece of at least MIN_VISIBLE_FRACTION of its in-image area."""
    if n.inside == 0:
        return False
    view = labels[n.y0:n.y0 + n.mask.shape[0], n.x0:n.x0 + n.mask.shape[1]]
    for k in np.unique(view[n.mask]):
        if k == 0:
            continue
        other = nuclei[k - 1]
        oh, ow = other.mask.shape
        region = (slice(other.y0, other.y0 + oh), slice(other.x0, other.x0 + ow))
        visible = labels[region] == k
        covered = np.zeros_like(visible)
        _paste(covered, other.y0, other.x0, n)
        if _main_piece(visible & ~covered) < max(MIN_VISIBLE_PIXELS,
                                                 MIN_VISIBLE_FRACTION * other.inside):
            return False
    return True


def _paste(target: np.ndarray, ty: int, tx: int, n: _Nucleus) -> None:
    """Set target (whose top-left is image pixel (ty, tx)) True where n's mask is."""
    th, tw = target.shape
    mh, mw = n.mask.shape
    y0, x0 = max(n.y0, ty), max(n.x0, tx)
    y1, x1 = min(n.y0 + mh, ty + th), min(n.x0 + mw, tx + tw)
    if y1 > y0 and x1 > x0:
        target[y0 - ty:y1 - ty, x0 - tx:x1 - tx] |= n.mask[y0 - n.y0:y1 - n.y0,
                                                           x0 - n.x0:x1 - n.x0]


def _main_piece(mask: np.ndarray) -> int:
    """Pixels of the largest 4-connected component of a bool mask (0 if empty)."""
    comp, count = ndimage.label(mask)
    return int(np.bincount(comp.ravel())[1:].max()) if count else 0


def _drop_fragments(labels: np.ndarray, nuclei: list[_Nucleus]) -> None:
    """Unlabel (paint as background) visible pieces smaller than MIN_VISIBLE_PIXELS."""
    for k, n in enumerate(nuclei, start=1):
        oh, ow = n.mask.shape
        view = labels[n.y0:n.y0 + oh, n.x0:n.x0 + ow]
        comp, count = ndimage.label(view == k)
        sizes = np.bincount(comp.ravel())
        for c in range(1, count + 1):
            if sizes[c] < MIN_VISIBLE_PIXELS:
                view[comp == c] = 0


def _render(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Grey fluorescence-like image uint8 [h, w] of a label map."""
    h, w = labels.shape
    background = rng.uniform(25, 70)
    contrast = rng.uniform(70, 150)
    count = int(labels.max())
    level = contrast * rng.lognormal(0.0, 0.2, size=count + 1)
    dim = rng.random(count + 1) < DIM_PROBABILITY
    level[dim] = contrast * rng.uniform(0.2, 0.45, size=int(dim.sum()))
    level[0] = 0.0
    signal = level[labels] * _domes(rng, labels)
    texture = smooth_noise(rng, h, w, rng.uniform(0.7, 1.6))
    signal *= 1 + rng.uniform(0.1, 0.25) * texture
    image = ndimage.gaussian_filter(background + signal, rng.uniform(0.6, 1.4))
    image *= illumination(rng, h, w)
    sigma = np.sqrt(rng.uniform(3, 8) ** 2 + rng.uniform(0.1, 0.6) * np.maximum(image, 0))
    image += sigma * rng.standard_normal((h, w))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _domes(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Per-pixel brightness profile float [h, w]: 1 deep inside a nucleus, falling off towards
    its own edge (also where it touches another) by a per-nucleus depth in [0, 0.45]."""
    profile = np.ones(labels.shape)
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        depth = rng.uniform(0.0, 0.45)
        own = np.pad(labels[box] == k, 1)
        edge = ndimage.distance_transform_edt(own)[1:-1, 1:-1]
        rel = edge / max(float(edge.max()), 1.0)
        view = profile[box]
        view[own[1:-1, 1:-1]] = (1 - depth * (1 - rel) ** 2)[own[1:-1, 1:-1]]
    return profile
