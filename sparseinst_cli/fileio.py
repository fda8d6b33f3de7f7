"""Files in and out: reading images as RGB arrays, and writing outputs atomically (a temporary
name in the same folder, then a rename)."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import RunError, UserError


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image as RGB uint8 [H, W, 3], honouring EXIF orientation (as detectron2).

    Grayscale, RGBA, palette and 16-bit images are converted; 16-bit values are scaled to 8 bits.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}; check the images folder of your dataset")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb_uint8(img)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError,
            Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path} ({e}); replace or remove the file") from e


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img).astype(np.float64)
        if img.mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        elif img.mode != "F" and (img.mode.startswith("I;16") or arr.max(initial=0) > 255):
            arr = arr / 257.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write `data` so that `path` is either absent/old or complete, never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give outputs the usual mode
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RunError(
                f"no space left on the device writing {path}; free some space and run again "
                "(nothing half-written was left behind)"
            ) from exc
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1).encode())


def write_image(path: Path, rgb_or_gray: np.ndarray) -> None:
    """Encode by the file's extension (RGB input) and write atomically."""
    image = rgb_or_gray
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ext = path.suffix.lower() if path.suffix else ".png"
    ok, buf = cv2.imencode(ext, image)
    if not ok:
        raise RunError(f"could not encode {path} as {ext}")
    atomic_write_bytes(path, buf.tobytes())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
