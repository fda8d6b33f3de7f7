"""Crowded-scene options: learned query anchors (with the matcher's anchor term, which peak
anchors use too) and the activation-map loss. `small` has peak anchors: test_peak_anchors.py."""
from __future__ import annotations

import math

import pytest
import torch
from model_support import assert_batch_independent

from sparseinst_cli.config import load_config
from sparseinst_cli.modeling.build import build_model
from sparseinst_cli.modeling.losses import activation_mass_loss
from sparseinst_cli.modeling.matcher import HungarianMatcher, anchor_affinity, resize_target_masks
from sparseinst_cli.modeling.small_head import (
    QueryAnchors,
    activation_centres,
    anchor_offsets,
    anchor_penalty,
    halton_points,
)
from sparseinst_cli.training.optim import param_groups
from sparseinst_cli.training.step import build_criterion

# Learned anchors instead of the small config's peak anchors.
CROWDED = ["model.decoder.num_masks=16", "model.num_classes=1", "model.decoder.query_anchors=true",
           "model.decoder.peak_anchors=false", "loss.centre_weight=0", "loss.iam_weight=0.5"]


def test_halton_points_spread_evenly_over_the_unit_square():
    points = halton_points(64)
    assert points.shape == (64, 2) and ((points > 0) & (points < 1)).all()
    assert len({tuple(p) for p in points.tolist()}) == 64
    cells = (points * 4).floor()  # a 4 x 4 grid: 4 points per cell if perfectly even
    counts = torch.bincount((cells[:, 1] * 4 + cells[:, 0]).long(), minlength=16)
    assert counts.min() >= 2 and counts.max() <= 6


def test_anchor_penalty_is_squared_distance_over_width_squared():
    anchors = QueryAnchors(2)
    with torch.no_grad():
        anchors.points.copy_(torch.tensor([[0.5, 0.5], [0.0, 1.0]]))
        anchors.log_width.copy_(torch.tensor([math.log(0.5), math.log(0.25)]))
    penalty = anchor_penalty(anchors.points, anchors.log_width, (2, 4)).reshape(2, 2, 4)
    xs = (torch.arange(4.0) + 0.5) / 4
    ys = (torch.arange(2.0) + 0.5) / 2
    dist2 = [(ys[:, None] - y) ** 2 + (xs[None, :] - x) ** 2 for x, y in ((0.5, 0.5), (0.0, 1.0))]
    torch.testing.assert_close(penalty[0], dist2[0] / 0.25)
    torch.testing.assert_close(penalty[1], dist2[1] / 0.0625)


def test_anchors_hold_each_activation_map_around_its_anchor():
    """With no content in the logits, each map is the anchor's prior: centred on the anchor."""
    torch.manual_seed(0)
    model = build_model(load_config("small", CROWDED).model).eval()
    branch = model.decoder.inst_branch
    with torch.no_grad():
        branch.iam_conv.weight.zero_()
        branch.anchors.points.copy_(torch.tensor([[0.5, 0.5], [0.25, 0.75]]).repeat(8, 1))
        branch.anchors.log_width.fill_(math.log(0.1))
        h, w = 16, 16
        features = torch.zeros(1, branch.iam_conv.in_channels, h, w)
        maps = branch.activation_maps(features, branch.anchor_points(1, (h, w), None))
    centres = activation_centres(maps, (h, w), branch.groups, branch.num_masks)[0]
    expected = torch.tensor([[0.5, 0.5], [0.25, 0.75]]).repeat(8, 1) * 16 - 0.5  # in cells
    torch.testing.assert_close(centres, expected, atol=0.05, rtol=0)
    penalty = anchor_penalty(branch.anchors.points, branch.anchors.log_width, (h, w))
    prior = torch.sigmoid(branch.iam_conv.bias[0] - penalty[0])
    torch.testing.assert_close(maps[0, 0], prior / prior.sum())


def test_anchor_parameters_get_no_weight_decay():
    cfg = load_config("small", CROWDED)
    model = build_model(cfg.model)
    anchor_ids = {id(p) for p in model.decoder.inst_branch.anchors.parameters()}
    for group in param_groups(model, cfg.solver):
        held = anchor_ids & {id(p) for p in group["params"]}
        if held:
            assert len(held) == 2 and group["weight_decay"] == cfg.solver.weight_decay_norm == 0
            break
    else:
        pytest.fail("the anchors are in no parameter group")


def test_activation_mass_loss_is_minus_log_of_the_mass_on_the_object():
    maps = torch.tensor([[[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]],
                         [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.25, 0.75]]])  # [T=2, G=2, P=4]
    targets = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    expected = -(math.log(0.5 + 1e-4) + math.log(1 + 1e-4)) / 2 - (
        math.log(1 + 1e-4) + math.log(0.75 + 1e-4)) / 2
    assert activation_mass_loss(maps, targets).item() == pytest.approx(expected, rel=1e-6)


def test_criterion_adds_the_activation_loss_of_the_matched_instances():
    torch.manual_seed(0)
    cfg = load_config("small", [*CROWDED, "loss.target_resize=area"])
    model = build_model(cfg.model).train()
    masks = torch.zeros(2, 64, 96, dtype=torch.bool)
    masks[0, 8:24, 8:24] = 1
    masks[1, 32:56, 40:72] = 1
    targets = [{"labels": torch.zeros(2, dtype=torch.long), "masks": masks}]
    outputs = model(torch.rand(1, 3, 64, 96) * 255)
    criterion = build_criterion(cfg)
    losses = criterion(outputs, targets)
    # By hand: the matcher's pairs, the maps of those instances, the masks at the maps' size.
    size = outputs["pred_masks"].shape[-2:]
    resized = resize_target_masks(masks, size, "area")
    (src, tgt), = criterion.matcher(outputs, [resized], [targets[0]["labels"]])
    maps = outputs["pred_iam"][0].flatten(2)[:, src].transpose(0, 1)  # [T, G, h*w]
    small = resize_target_masks(masks, outputs["pred_iam"].shape[-2:], "area").flatten(1)[tgt]
    expected = 0.5 * activation_mass_loss(maps.float(), small) / 2
    torch.testing.assert_close(losses["loss_iam"], expected)
    losses["loss_iam"].backward()
    assert model.decoder.inst_branch.iam_conv.weight.grad.abs().sum() > 0
    cfg.loss.iam_weight = 0.0
    assert "loss_iam" not in build_criterion(cfg)(model(torch.rand(1, 3, 64, 96) * 255), targets)


def test_offsets_measure_the_object_from_the_anchor_in_widths():
    anchors = QueryAnchors(2)
    with torch.no_grad():
        anchors.points.copy_(torch.tensor([[0.5, 0.5], [0.2, 0.4]]))
        anchors.log_width.copy_(torch.tensor([math.log(0.1), math.log(0.2)]))
    centres = torch.tensor([[[0.6, 0.3], [0.2, 0.4]]])
    expected = torch.tensor([[[1.0, -2.0, 5.0], [0.0, 0.0, 0.0]]])
    points, log_width = anchors(1)
    torch.testing.assert_close(anchor_offsets(centres, points, log_width), expected)


def test_offset_embedding_starts_at_zero_and_learns():
    """At initialisation the anchors change the maps only; the offset input starts silent."""
    torch.manual_seed(0)
    model = build_model(load_config("small", CROWDED).model).train()
    embed = model.decoder.inst_branch.offset_embed
    assert embed.weight.abs().sum() == 0 and embed.bias.abs().sum() == 0
    out = model(torch.rand(1, 3, 64, 96) * 255)
    out["pred_logits"].sum().backward()
    assert embed.weight.grad.abs().sum() > 0


def test_crowded_head_is_batch_independent_and_keeps_official_keys_absent():
    torch.manual_seed(0)
    model = build_model(load_config("small", CROWDED).model).eval()
    torch.nn.init.normal_(model.decoder.inst_branch.offset_embed.weight, std=0.1)
    batched = assert_batch_independent(model, torch.rand(2, 3, 64, 96) * 255)
    assert set(batched) == {"pred_logits", "pred_scores", "pred_masks"}
    official = build_model(load_config("r50_giam").model).state_dict().keys()
    assert not any("anchors" in k or "offset_embed" in k for k in official)


def test_anchor_affinity_favours_the_nearest_anchor_by_its_width():
    masks = torch.zeros(1, 4, 8)
    masks[0, 1:3, 1:3] = 1.0  # centre of mass at cell (1.5, 1.5): (0.25, 0.5) of the map
    anchors = torch.tensor([[0.25, 0.5, math.log(0.1)], [0.75, 0.5, math.log(0.25)],
                            [0.75, 0.5, math.log(0.5)]])
    affinity = anchor_affinity(anchors, masks.flatten(1), (4, 8))[:, 0]
    expected = torch.tensor([1.0, math.exp(-(0.5 / 0.25) ** 2), math.exp(-1.0)])
    torch.testing.assert_close(affinity, expected)


def test_matcher_with_anchors_gives_an_object_to_the_nearer_of_two_equal_candidates():
    masks = torch.zeros(1, 4, 8)
    masks[0, 1:3, 5:7] = 1.0
    outputs = {
        "pred_logits": torch.zeros(1, 2, 1),
        "pred_masks": (masks * 20 - 10).expand(2, -1, -1)[None],  # two equal predictions
        "pred_anchors": torch.tensor([[[0.1, 0.5, math.log(0.2)], [0.7, 0.5, math.log(0.2)]]]),
    }
    labels = [torch.zeros(1, dtype=torch.long)]
    src, _ = HungarianMatcher(alpha=0.8, beta=0.2, anchor_power=1.0)(outputs, [masks], labels)[0]
    assert src.tolist() == [1]
    outputs["pred_anchors"] = outputs["pred_anchors"].flip(1)
    src, _ = HungarianMatcher(alpha=0.8, beta=0.2, anchor_power=1.0)(outputs, [masks], labels)[0]
    assert src.tolist() == [0]
