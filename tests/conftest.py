"""Shared fixtures: reference data, synthetic official checkpoints, a tiny trained-format model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))

from synth_checkpoint import synth_state_dict  # noqa: E402

torch.set_num_threads(2)

# Official layout name -> our zoo config.
LAYOUT_TO_ZOO = {
    "r50_base": "r50_base",
    "r50_giam": "r50_giam",
    "r50_giam_soft": "r50_giam_soft",
    "r50_dcn_giam": "r50_dcn_giam_aug",
    "r50vd_giam": "r50vd_giam",
    "r50vd_dcn_giam": "r50vd_dcn_giam_aug",
    "r101_giam": "r101_giam",
    "cspdarknet53_giam": "cspdarknet53_giam",
    "pvt_b1_giam": "pvt_b1_giam",
}
TINY_OVERRIDES = [
    "model.backbone.name=resnet18",
    "model.encoder.channels=32",
    "model.decoder.num_masks=10",
    "model.decoder.inst_dim=32",
    "model.decoder.mask_dim=32",
    "model.decoder.inst_convs=1",
    "model.decoder.mask_convs=1",
    "model.decoder.kernel_dim=16",
    "model.num_classes=3",
    "input.min_size_test=128",
    "input.max_size_test=192",
]


def official_state_dict(layout: str) -> dict[str, torch.Tensor]:
    entries = json.loads((DATA / "layouts" / f"{layout}.json").read_text())["state_dict"]
    return synth_state_dict(entries)


@pytest.fixture(scope="session")
def r50_giam_official(tmp_path_factory) -> Path:
    """An official-format r50_giam checkpoint with the reference case's synthetic weights."""
    path = tmp_path_factory.mktemp("ckpt") / "r50_giam_official.pth"
    torch.save({"model": official_state_dict("r50_giam")}, path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Our checkpoint format for a tiny 3-class model (random init), for fast command tests."""
    from sparseinst_cli.config import load_config
    from sparseinst_cli.loading.checkpoint import atomic_save, make_checkpoint
    from sparseinst_cli.modeling import build_model

    torch.manual_seed(0)
    cfg = load_config("r50_giam", TINY_OVERRIDES)
    model = build_model(cfg.model)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    atomic_save(
        make_checkpoint(
            model,
            config=cfg.to_dict(),
            class_names=["circle", "square", "triangle"],
            category_ids=[1, 3, 7],
        ),
        path,
    )
    return path
