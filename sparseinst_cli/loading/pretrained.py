"""ImageNet backbone weights by name: `imagenet` (the config's tag) or a timm tag such as
`resnet50.tv_in1k`, fetched once through the Hugging Face Hub into its usual cache
(`$HF_HOME`, `$HF_HUB_CACHE`) and reused from there, as timm does. Offline, a cached copy is
used; without one the error says what to download and where to pass it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import RunError, UserError

IMAGENET = "imagenet"
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".pkl")
HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def is_weights_name(spec: str) -> bool:
    """Whether `spec` names weights (a tag) rather than a file path."""
    path = Path(spec)
    return not path.exists() and len(path.parts) == 1 and path.suffix not in WEIGHT_SUFFIXES


def resolve_backbone_weights(spec: str, default_tag: str | None) -> Path:
    """A local file for `spec`: the file itself, or the cached download of a tag.

    `imagenet` stands for `default_tag` (the config's `model.backbone.pretrained`).
    """
    if not is_weights_name(spec):
        if not Path(spec).is_file():
            raise UserError(f"--backbone-weights {spec}: file not found")
        return Path(spec)
    tag = default_tag if spec == IMAGENET else spec
    if not tag:
        raise UserError("--backbone-weights imagenet: this config names no pretrained tag "
                        "(model.backbone.pretrained); give a timm tag or a file")
    return _download(tag, _hub_repo(tag))


def _hub_repo(tag: str) -> str:
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(tag) if "." in tag else None
    except RuntimeError:  # timm: "Invalid pretrained tag (...)"
        cfg = None
    if cfg is None or not cfg.hf_hub_id:
        import timm

        arch = tag.split(".")[0]
        known = timm.list_pretrained(f"{arch}.*")[:4]
        hint = f" (e.g. {', '.join(known)})" if known else ""
        raise UserError(f"--backbone-weights {tag}: not a timm pretrained tag{hint}")
    return cfg.hf_hub_id


def _download(tag: str, repo: str) -> Path:
    """The cached file if there is one (no network), else a download into the cache."""
    from huggingface_hub import hf_hub_download

    cache_dir = os.environ.get("HF_HUB_CACHE") or None  # read now, not at import
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    reason = "not in the cache, and HF_HUB_OFFLINE forbids downloads"
    for local_only in (True, False):
        if offline and not local_only:
            break
        for filename in HUB_FILES:
            try:
                return Path(hf_hub_download(repo_id=repo, filename=filename, cache_dir=cache_dir,
                                            local_files_only=local_only))
            except Exception as exc:  # not cached, not on the hub, hub unreachable
                if not local_only:
                    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    raise RunError(
        f"cannot get ImageNet weights '{tag}' ({reason}); download "
        f"https://huggingface.co/{repo}/resolve/main/{HUB_FILES[0]} and pass the file "
        "with --backbone-weights FILE"
    )
