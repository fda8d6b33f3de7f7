"""Golden tests: official checkpoints load strictly and reproduce the official outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DATA, LAYOUT_TO_ZOO, official_state_dict
from pycocotools import mask as mask_util

from sparseinst_cli.config import load_config
from sparseinst_cli.data.coco import read_image_rgb
from sparseinst_cli.loading.checkpoint import compare_state_dicts, internal_state_dict
from sparseinst_cli.modeling import build_model
from sparseinst_cli.postprocess import postprocess
from sparseinst_cli.predictor import Predictor
from sparseinst_cli.preprocess import prepare_images

CASE = np.load(DATA / "r50_giam.npz")
META = json.loads((DATA / "r50_giam.json").read_text())


@pytest.mark.parametrize("layout", sorted(LAYOUT_TO_ZOO))
def test_every_official_layout_loads_strictly_and_runs(layout):
    cfg = load_config(LAYOUT_TO_ZOO[layout])
    model = build_model(cfg.model).eval()
    state = internal_state_dict({"model": official_state_dict(layout)}, cfg.model.checkpoint_layout)
    fitting, report = compare_state_dicts(model, state)
    assert report.clean, report.describe()
    model.load_state_dict(fitting, strict=True)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 96, 128) * 255)
    assert out["pred_logits"].shape == (1, 100, 80)
    assert out["pred_scores"].shape == (1, 100, 1)
    assert out["pred_masks"].shape == (1, 100, 24, 32)
    assert all(torch.isfinite(v).all() for v in out.values())


@pytest.fixture(scope="module")
def predictor(r50_giam_official):
    """The fast path as the `sparseinst` command builds it: BN folded, channels-last, NNPACK
    Winograd convs in the encoder, decoder and (GOMP_SPINCOUNT set) backbone."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GOMP_SPINCOUNT", "1000")
        made = Predictor(r50_giam_official, "r50_giam", min_size=320, max_size=533)
    swapped = sum(type(m).__name__ == "NnpackConv3x3" for m in made.model.modules())
    assert swapped >= 17 or not torch._nnpack_available()  # 9 in the head, 8 in the backbone
    return made


def test_raw_outputs_match_official(predictor):
    with torch.no_grad():
        out = predictor.model(torch.from_numpy(CASE["image"])[None])
    for key in ("pred_logits", "pred_scores", "pred_masks"):
        assert np.abs(out[key].numpy() - CASE[key]).max() <= 1e-4, key


def _assert_instances_match(instances, reference):
    assert len(instances) == len(reference)
    for i, ref in enumerate(reference):
        assert int(instances.labels[i]) == ref["label"]
        assert abs(float(instances.scores[i]) - ref["score"]) <= 1e-4
        gt = mask_util.decode(ref["rle"]).astype(bool)
        ours = instances.masks[i].numpy()
        assert (gt & ours).sum() / max((gt | ours).sum(), 1) >= 0.99


def test_jpeg_to_instances_match_official(predictor):
    image = read_image_rgb(DATA / "000000006471.jpg")
    batch = predictor.prepare([image])
    assert batch.image_sizes == [tuple(CASE["resized_hw"])]
    assert np.abs(batch.images[0].numpy() - CASE["image"]).max() == 0
    instances = predictor.predict(image).instances
    _assert_instances_match(instances, META["instances"])


def official_postprocess(out, image_hw, orig_hw, cls_thr=0.005, mask_thr=0.45):
    """DESIGN.md's post-processing written the plain way (two full-resolution resizes)."""
    logits, objectness, masks = (out[k][0] for k in ("pred_logits", "pred_scores", "pred_masks"))
    scores, labels = torch.sqrt(logits.sigmoid() * objectness.sigmoid()).max(-1)
    keep = scores > cls_thr
    probs = masks[keep].sigmoid()
    inside = (probs > mask_thr).float()
    scores = scores[keep] * (probs * inside).sum((1, 2)) / (inside.sum((1, 2)) + 1e-6)
    padded = [s * 4 for s in masks.shape[-2:]]
    up = F.interpolate(probs[:, None], size=padded, mode="bilinear", align_corners=False)
    up = up[:, :, : image_hw[0], : image_hw[1]]
    full = F.interpolate(up, size=orig_hw, mode="bilinear", align_corners=False)[:, 0]
    return scores, labels[keep], full > mask_thr


def test_padded_input_matches_official_rules(predictor):
    """min size 300 resizes to 300x450, padded to 320x480: padding and cropping must be right."""
    image = read_image_rgb(DATA / "000000006471.jpg")
    batch = prepare_images(
        [image], min_size=300, max_size=533, pixel_mean=predictor.loaded.config.model.pixel_mean
    )
    assert batch.image_sizes == [(300, 450)] and batch.padded_size == (320, 480)
    model = predictor.model
    with torch.no_grad():
        out = model(batch.images)
        # Official: normalise, then zero-pad (our model pads with the mean, normalises inside).
        resized = batch.images[:, :, :300, :450]
        normalised = (resized - model.pixel_mean) / model.pixel_std
        official_in = F.pad(normalised, (0, 30, 0, 20))
        official = model.decoder(model.encoder(model.backbone(official_in)))
    for key in out:
        assert torch.allclose(out[key], official[key], atol=1e-5), key
    ours = postprocess(out, image_sizes=batch.image_sizes, orig_sizes=batch.orig_sizes)[0]
    scores, labels, masks = official_postprocess(official, (300, 450), (333, 500))
    assert torch.equal(ours.labels, labels)
    assert torch.allclose(ours.scores, scores, atol=1e-5)
    ious = (ours.masks & masks).sum((1, 2)) / (ours.masks | masks).sum((1, 2)).clamp(min=1)
    assert ious.min() >= 0.99


def test_batched_postprocess_equals_per_image(predictor):
    image = read_image_rgb(DATA / "000000006471.jpg")
    small = image[:200, :300].copy()
    batch = predictor.prepare([image, small])
    with torch.no_grad():
        out = predictor.model(batch.images)
    both = postprocess(out, image_sizes=batch.image_sizes, orig_sizes=batch.orig_sizes)
    for i in range(2):
        single = {k: v[i : i + 1] for k, v in out.items()}
        alone = postprocess(
            single, image_sizes=batch.image_sizes[i : i + 1], orig_sizes=batch.orig_sizes[i : i + 1]
        )[0]
        assert torch.equal(both[i].masks, alone.masks)
        assert torch.equal(both[i].scores, alone.scores)
    assert both[1].masks.shape[-2:] == (200, 300)
