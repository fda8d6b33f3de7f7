"""Peak anchors of the small config: a centre heatmap whose peaks place the instances' anchors,
trained with CenterNet's focal loss."""
from __future__ import annotations

import math

import pytest
import torch
from model_support import assert_batch_independent

from sparseinst_cli.config import load_config
from sparseinst_cli.errors import UserError
from sparseinst_cli.modeling.build import build_model
from sparseinst_cli.modeling.losses import centre_focal_loss, centre_targets
from sparseinst_cli.modeling.small_head import PeakAnchors, heatmap_peaks
from sparseinst_cli.training.step import build_criterion

PEAKS = ["model.decoder.num_masks=16", "model.num_classes=1"]  # small has peak anchors


def two_touching_squares() -> torch.Tensor:
    masks = torch.zeros(2, 8, 12)
    masks[0, 1:6, 1:6] = 1.0
    masks[1, 1:6, 6:11] = 1.0  # touches the first along a whole side
    return masks


def test_centre_targets_peak_at_each_centre_and_fall_around_it():
    masks = two_touching_squares()
    heat = centre_targets(masks)
    assert heat[3, 3] == 1 and heat[3, 8] == 1  # centres of mass (3, 3) and (3, 8)
    assert int((heat == 1).sum()) == 2
    sigma2 = (math.sqrt(25) / 4) ** 2
    torch.testing.assert_close(heat[3, 1], torch.tensor(math.exp(-4 / (2 * sigma2))))
    assert centre_targets(masks[:0]).abs().sum() == 0
    assert int((centre_targets(torch.zeros(1, 8, 12)) == 1).sum()) == 0  # an empty mask: none


def _rod(h: int, w: int, centre: tuple[float, float], half: tuple[float, float],
         angle: float) -> torch.Tensor:
    """A filled ellipse (half axes in cells, angle in radians) as a float mask [h, w]."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing="ij")
    dx, dy = xs - centre[0], ys - centre[1]
    along = dx * math.cos(angle) + dy * math.sin(angle)
    across = -dx * math.sin(angle) + dy * math.cos(angle)
    return ((along / half[0]).square() + (across / half[1]).square() <= 1).float()


def test_oriented_centre_targets_follow_each_object_and_equal_round_ones_on_disks():
    disk = _rod(40, 40, (20, 20), (8, 8), 0.0)[None]
    torch.testing.assert_close(centre_targets(disk, oriented=True), centre_targets(disk),
                               atol=2e-3, rtol=0)
    # two parallel rods side by side, 4 cells apart, tilted by 30 degrees
    tilt = math.radians(30)
    step = (-4 * math.sin(tilt), 4 * math.cos(tilt))
    rods = torch.stack([_rod(48, 64, (32 + k * step[0], 24 + k * step[1]), (16, 1.6), tilt)
                        for k in (-0.5, 0.5)])
    heat = centre_targets(rods, oriented=True)
    assert int((heat == 1).sum()) == 2
    # on the neighbour's centre line, a rod's round Gaussian is still high; its ellipse is not
    assert (rods[1] * centre_targets(rods[:1], oriented=True)).max() < 0.05
    assert (rods[1] * centre_targets(rods[:1])).max() > 0.2
    # along its axis a rod's ellipse stays high further than a round Gaussian of it does
    one = centre_targets(rods[:1], oriented=True)
    y, x = (one == 1).nonzero()[0].tolist()
    along = (y + round(6 * math.sin(tilt)), x + round(6 * math.cos(tilt)))
    assert one[along] > 0.5 > centre_targets(rods[:1])[along]


def test_oriented_centre_targets_peak_on_the_object_when_its_centre_is_outside():
    arc = torch.zeros(40, 40)
    ys, xs = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    radius = ((xs - 20).square() + (ys - 20).square()).sqrt()
    arc[(radius >= 12) & (radius <= 15) & (ys >= 20)] = 1.0  # a half ring: centre of mass outside
    peak = (centre_targets(arc[None], oriented=True) == 1).nonzero()
    assert peak.shape[0] == 1 and arc[tuple(peak[0])] == 1
    assert arc[tuple((centre_targets(arc[None]) == 1).nonzero()[0])] == 0  # round: off it


def test_centre_focal_loss_is_lowest_for_the_target_itself():
    targets = centre_targets(two_touching_squares())[None, None]
    good = torch.logit(targets.clamp(1e-3, 1 - 1e-3))
    loss = centre_focal_loss(good, targets)
    assert loss < 0.5 * centre_focal_loss(good.roll(1, dims=-1), targets)  # peaks a cell off
    assert loss < 0.1 * centre_focal_loss(torch.zeros_like(good), targets)
    # Normalised by the number of centres: two copies of the image give the same value.
    twice = centre_focal_loss(good.repeat(2, 1, 1, 1), targets.repeat(2, 1, 1, 1))
    torch.testing.assert_close(twice, loss)


def test_heatmap_peaks_are_the_best_local_maxima_in_raster_order():
    ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(8.0), indexing="ij")
    logits = (-5.0 - 0.01 * (xs + ys))[None, None]  # a slope with its maximum in a corner
    logits[0, 0, 1, 2] = 3.0
    logits[0, 0, 1, 3] = 2.5  # beside the first: not a local maximum
    logits[0, 0, 4, 6] = 1.0
    torch.testing.assert_close(heatmap_peaks(logits, 2)[0],
                               torch.tensor([[2.5 / 8, 1.5 / 6], [6.5 / 8, 4.5 / 6]]))
    # The third best maximum is the slope's top corner, first in raster order.
    torch.testing.assert_close(heatmap_peaks(logits, 3)[0], torch.tensor(
        [[0.5 / 8, 0.5 / 6], [2.5 / 8, 1.5 / 6], [6.5 / 8, 4.5 / 6]]))
    # A map of ties only still gives distinct points.
    assert len({tuple(p) for p in heatmap_peaks(torch.zeros(1, 1, 6, 8), 48)[0].tolist()}) == 48
    with pytest.raises(UserError, match="too small for 49 instances"):
        heatmap_peaks(logits, 49)


def test_a_wider_peak_window_keeps_one_peak_per_ridge_and_separate_neighbours():
    """Along a ridge with a noisy bump (one rod's heatmap) a 3x3 window finds two peaks, a 7x7
    one; a higher peak 4 cells away stays apart in 7x7 and swallows the ridge's in 9x9."""
    logits = torch.full((1, 1, 12, 16), -5.0)
    logits[0, 0, 3, 2:14] = 1.0 - 0.01 * (torch.arange(2, 14.0) - 4).abs()  # top at x = 4
    logits[0, 0, 3, 6:9] = torch.tensor([0.9, 0.98, 0.9])  # a bump 3 cells along the ridge
    logits[0, 0, 7, 8] = 2.0  # a neighbour's peak, 4 cells from the ridge's top

    def peaks(window: int, count: int) -> set[tuple[int, int]]:
        points = heatmap_peaks(logits, count, window)[0]
        return {(int(x * 16), int(y * 12)) for x, y in points.tolist()}

    assert peaks(3, 3) == {(4, 3), (7, 3), (8, 7)}
    assert peaks(7, 2) == {(4, 3), (8, 7)} and (7, 3) not in peaks(7, 3)
    assert (8, 7) in peaks(9, 2) and (4, 3) not in peaks(9, 3)


def test_peak_anchors_sit_on_the_heatmap_peaks_with_one_learned_width():
    anchors = PeakAnchors(2, width_cells=2.0)
    logits = torch.full((2, 1, 8, 8), -5.0)
    logits[0, 0, 2, 5] = logits[0, 0, 6, 1] = logits[1, 0, 1, 1] = logits[1, 0, 7, 7] = 4.0
    points, log_width = anchors(logits, (4, 4))
    torch.testing.assert_close(points, torch.tensor([[[5.5, 2.5], [1.5, 6.5]],
                                                     [[1.5, 1.5], [7.5, 7.5]]]) / 8)
    torch.testing.assert_close(log_width, torch.full((2, 2), math.log(2.0 / 4)))
    assert anchors.no_weight_decay


def test_peak_model_trains_its_heatmap_and_anchor_width():
    torch.manual_seed(0)
    cfg = load_config("small", PEAKS)
    model = build_model(cfg.model).train()
    images = torch.rand(2, 3, 64, 96) * 255
    out = model(images)
    assert out["pred_centre_map"].shape == (2, 1, 16, 24)
    # The anchors handed to the matcher are the centre heatmap's peaks.
    peaks = heatmap_peaks(out["pred_centre_map"], 16)
    torch.testing.assert_close(out["pred_anchors"][..., :2], peaks)
    masks = torch.zeros(2, 64, 96, dtype=torch.bool)
    masks[0, 8:24, 8:24] = masks[1, 30:50, 40:70] = True
    targets = [{"labels": torch.zeros(1, dtype=torch.long), "masks": masks[i : i + 1]}
               for i in range(2)]
    losses = build_criterion(cfg)(out, targets)
    assert "loss_centre" in losses
    sum(losses.values()).backward()
    branch = model.decoder.mask_branch
    assert branch.centre_head.weight.grad.abs().sum() > 0
    assert model.decoder.inst_branch.anchors.log_width.grad is not None
    with torch.no_grad():
        inference = model.eval()(images)
    assert set(inference) == {"pred_logits", "pred_scores", "pred_masks"}


def test_peak_model_is_batch_independent():
    torch.manual_seed(0)
    model = build_model(load_config("small", PEAKS).model).eval()
    torch.nn.init.normal_(model.decoder.mask_branch.centre_head.weight, std=0.5)
    assert_batch_independent(model, torch.rand(2, 3, 64, 96) * 255)


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.decoder.peak_anchors=false"], "needs the centre heatmap"),
    (["loss.centre_weight=0"], "needs loss.centre_weight > 0"),
])
def test_peak_anchors_and_their_loss_go_together(overrides: list[str], message: str):
    with pytest.raises(UserError, match=message):
        build_criterion(load_config("small", ["model.num_classes=1", *overrides]))


def test_learned_and_peak_anchors_are_refused_together():
    with pytest.raises(UserError, match="two kinds of anchors"):
        build_model(load_config("small", ["model.decoder.query_anchors=true"]).model)


@pytest.mark.parametrize("window", [4, 0, -3])
def test_a_peak_window_without_a_centre_cell_is_refused(window: int):
    with pytest.raises(UserError, match=f"peak_window must be an odd .* got {window}"):
        build_model(load_config("small", [f"model.decoder.peak_window={window}"]).model)


def test_official_variants_have_no_centre_heatmap():
    keys = build_model(load_config("r50_giam").model).state_dict().keys()
    assert not any("centre_head" in k or "anchors" in k for k in keys)
