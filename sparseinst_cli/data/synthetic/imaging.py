"""Microscope-like image formation shared by the synthetic cell datasets: smooth noise and
uneven illumination."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def smooth_noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise float [h, w] with unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal((h, w)), sigma)
    return field / max(float(field.std()), 1e-6)


def illumination(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth multiplicative field float [h, w] around 1 (vignetting, uneven lighting)."""
    grid = rng.uniform(-1, 1, size=(3, 3)).astype(np.float32)
    field = np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC))
    return 1 + rng.uniform(0.1, 0.3) * field.astype(np.float64)
