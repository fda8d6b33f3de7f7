"""Expand `predict` sources (images, folders, globs, videos, text lists) into a list of inputs."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import cv2

from ..errors import UserError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


@dataclass(frozen=True)
class SourceItem:
    """One input: `relative` is the output name, kept relative to a folder source."""

    path: Path
    kind: str  # image | video
    relative: Path


def _kind(path: Path) -> str:
    return "video" if path.suffix.lower() in VIDEO_EXTS else "image"


def _from_folder(folder: Path, recursive: bool) -> list[SourceItem]:
    files = folder.rglob("*") if recursive else folder.glob("*")
    media = sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS)
    if not media:
        hint = "" if recursive else " (add --recursive to search subfolders)"
        raise UserError(f"folder {folder} holds no images or videos{hint}")
    return [SourceItem(p, _kind(p), p.relative_to(folder)) for p in media]


def _from_list(list_file: Path) -> list[SourceItem]:
    lines = [ln.strip() for ln in list_file.read_text().splitlines()]
    paths = [Path(ln) if Path(ln).is_absolute() else list_file.parent / ln for ln in lines if ln]
    if not paths:
        raise UserError(f"list file {list_file} names no files")
    return [SourceItem(p, _kind(p), Path(p.name)) for p in paths]


def expand_sources(sources: list[str], *, recursive: bool = False) -> list[SourceItem]:
    """Every SOURCE argument -> inputs in a stable order. Missing paths are UserErrors."""
    items: list[SourceItem] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            items += _from_folder(path, recursive)
        elif path.is_file() and path.suffix.lower() == ".txt":
            items += _from_list(path)
        elif path.is_file():
            items.append(SourceItem(path, _kind(path), Path(path.name)))
        elif any(ch in source for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(source, recursive=recursive))
            files = [p for p in matches if p.is_file()]
            if not files:
                raise UserError(f"pattern '{source}' matches no files")
            items += [SourceItem(p, _kind(p), Path(p.name)) for p in files]
        else:
            raise UserError(f"source not found: {source}")
    return items


def count_pictures(items: list[SourceItem]) -> int:
    """Images plus the frames their containers announce for videos (0 where unknown; 1 for a
    video that cannot be opened, which is skipped as one input)."""
    total = 0
    for item in items:
        if item.kind == "image":
            total += 1
            continue
        cap = cv2.VideoCapture(str(item.path))
        total += max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0) if cap.isOpened() else 1
        cap.release()
    return total
