"""Tests for the matching cost and the Hungarian matcher, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from sparseinst_cli.errors import RunError, UserError
from sparseinst_cli.modeling.matcher import HungarianMatcher, matching_cost, resize_target_masks

OFFICIAL_MATCHER = HungarianMatcher(alpha=0.8, beta=0.2, anchor_power=0.0)

EPS = 1e-4
BIG = 30.0  # sigmoid(30) == 1.0 in float32, sigmoid(-30) ~ 1e-13


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _hand_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """3 predictions x 2 targets over 4 pixels where a greedy choice is not optimal.

    Both targets cover pixels 0-1 (labels 0 and 1). Predictions A and B cover the
    same pixels; C is 0.5 everywhere. A prefers class 0, B almost never says class 1.
    """
    pred_logits = torch.tensor([[2.0, 0.0], [0.0, -10.0], [0.0, 0.0]])
    pred_masks = torch.tensor(
        [[BIG, BIG, -BIG, -BIG], [BIG, BIG, -BIG, -BIG], [0.0, 0.0, 0.0, 0.0]]
    )
    tgt_labels = torch.tensor([0, 1])
    tgt_masks = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    return pred_logits, pred_masks, tgt_labels, tgt_masks


def test_matching_cost_hand_values() -> None:
    pred_logits, pred_masks, tgt_labels, tgt_masks = _hand_case()
    cost = matching_cost(pred_logits, pred_masks, tgt_labels, tgt_masks)
    exact = (4 / (4 + EPS)) ** 0.8  # p = g = [1, 1, 0, 0]
    half = (2 * 1.0 / (4 * 0.25 + 2 + EPS)) ** 0.8  # p = 0.5 everywhere
    expected = torch.tensor(
        [
            [exact * sigmoid(2.0) ** 0.2, exact * 0.5**0.2],
            [exact * 0.5**0.2, exact * sigmoid(-10.0) ** 0.2],
            [half * 0.5**0.2, half * 0.5**0.2],
        ]
    )
    assert cost.shape == (3, 2)
    assert cost.dtype == torch.float32
    torch.testing.assert_close(cost, expected, rtol=1e-5, atol=1e-6)


def test_matching_cost_powers_are_arguments() -> None:
    pred_logits, pred_masks, tgt_labels, tgt_masks = _hand_case()
    cost = matching_cost(pred_logits, pred_masks, tgt_labels, tgt_masks, alpha=1.0, beta=0.0)
    assert cost[2, 0].item() == pytest.approx(2 / (3 + EPS), rel=1e-6)


def test_matcher_finds_the_optimal_not_the_greedy_assignment() -> None:
    pred_logits, pred_masks, tgt_labels, tgt_masks = _hand_case()
    outputs = {"pred_logits": pred_logits[None], "pred_masks": pred_masks.view(1, 3, 2, 2)}
    matcher = OFFICIAL_MATCHER
    [(pred_idx, tgt_idx)] = matcher(outputs, [tgt_masks.view(2, 2, 2)], [tgt_labels])
    # Greedy would take A->0 (the largest entry) and then C->1; the optimum is A->1, B->0.
    assert pred_idx.tolist() == [0, 1]
    assert tgt_idx.tolist() == [1, 0]
    assert pred_idx.dtype == torch.int64 and tgt_idx.dtype == torch.int64


def _random_batch(
    sizes: list[int], n: int = 5, k: int = 4, hw: tuple[int, int] = (6, 7)
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    outputs = {
        "pred_logits": torch.randn(len(sizes), n, k, generator=gen),
        "pred_masks": 3 * torch.randn(len(sizes), n, *hw, generator=gen),
    }
    masks = [(torch.rand(m, *hw, generator=gen) > 0.5).float() for m in sizes]
    labels = [torch.randint(0, k, (m,), generator=gen) for m in sizes]
    return outputs, masks, labels


def test_batched_matching_equals_per_image_matching() -> None:
    sizes = [2, 0, 3, 5]
    outputs, masks, labels = _random_batch(sizes)
    matcher = OFFICIAL_MATCHER
    batched = matcher(outputs, masks, labels)
    for b in range(len(sizes)):
        single = {key: value[b : b + 1] for key, value in outputs.items()}
        [(pred_idx, tgt_idx)] = matcher(single, [masks[b]], [labels[b]])
        assert torch.equal(batched[b][0], pred_idx)
        assert torch.equal(batched[b][1], tgt_idx)
        assert len(pred_idx) == min(5, sizes[b])


def test_concatenated_cost_blocks_equal_per_image_costs() -> None:
    sizes = [2, 3]
    outputs, masks, labels = _random_batch(sizes)
    logits = outputs["pred_logits"].flatten(0, 1)
    pred_masks = outputs["pred_masks"].flatten(0, 1).flatten(1)
    full = matching_cost(
        logits, pred_masks, torch.cat(labels), torch.cat(masks).flatten(1)
    )  # [B*N, sum M]
    blocks = full.view(2, 5, -1).split(sizes, dim=-1)
    for b in range(2):
        single = matching_cost(
            outputs["pred_logits"][b],
            outputs["pred_masks"][b].flatten(1),
            labels[b],
            masks[b].flatten(1),
        )
        torch.testing.assert_close(blocks[b][b], single)


def test_images_without_targets_give_empty_indices() -> None:
    outputs, masks, labels = _random_batch([0, 0])
    for pred_idx, tgt_idx in OFFICIAL_MATCHER(outputs, masks, labels):
        assert pred_idx.numel() == 0 and tgt_idx.numel() == 0
        assert pred_idx.dtype == torch.int64 and tgt_idx.dtype == torch.int64


def test_more_targets_than_predictions_matches_every_prediction() -> None:
    outputs, masks, labels = _random_batch([7], n=3)
    [(pred_idx, tgt_idx)] = OFFICIAL_MATCHER(outputs, masks, labels)
    assert pred_idx.tolist() == [0, 1, 2]
    assert len(set(tgt_idx.tolist())) == 3


@pytest.mark.parametrize("key", ["pred_logits", "pred_masks"])
def test_non_finite_cost_raises_run_error(key: str) -> None:
    outputs, masks, labels = _random_batch([2])
    outputs[key][0, 1] = float("nan")  # (+-Inf logits still give a finite cost)
    with pytest.raises(RunError, match="non-finite matching cost"):
        OFFICIAL_MATCHER(outputs, masks, labels)


def test_label_outside_num_classes_raises_user_error() -> None:
    outputs, masks, labels = _random_batch([2], k=4)
    labels[0][1] = 4
    with pytest.raises(UserError, match="num_classes"):
        OFFICIAL_MATCHER(outputs, masks, labels)


def test_matching_cost_ignores_autocast() -> None:
    pred_logits, pred_masks, tgt_labels, tgt_masks = _hand_case()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cost = matching_cost(pred_logits, pred_masks, tgt_labels, tgt_masks)
    assert cost.dtype == torch.float32
    torch.testing.assert_close(cost, matching_cost(pred_logits, pred_masks, tgt_labels, tgt_masks))


def test_resize_target_masks_bilinear() -> None:
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True  # one 4x4 block -> one pixel at stride 4
    resized = resize_target_masks(masks, (2, 2))
    assert resized.dtype == torch.float32
    torch.testing.assert_close(resized, torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))
    # Sample points fall between pixels: a single column of ones gives half weight.
    edge = torch.zeros(1, 4, 4, dtype=torch.uint8)
    edge[0, :, 1] = 1
    expected = torch.tensor([[[0.5, 0.0], [0.5, 0.0]]])
    torch.testing.assert_close(resize_target_masks(edge, (2, 2)), expected)
    assert resize_target_masks(torch.zeros(0, 8, 8, dtype=torch.bool), (2, 2)).shape == (0, 2, 2)


def test_resize_target_masks_area_keeps_the_covered_fraction() -> None:
    """A 3-pixel-wide bar at stride 4: bilinear samples see 1/2 or nothing, area sees 3/4."""
    masks = torch.zeros(1, 8, 8, dtype=torch.uint8)
    masks[0, :, 1:4] = 1
    bilinear = resize_target_masks(masks, (2, 2))
    area = resize_target_masks(masks, (2, 2), "area")
    torch.testing.assert_close(area, torch.tensor([[[0.75, 0.0], [0.75, 0.0]]]))
    assert area.sum() == masks.sum() / 16 and bilinear.sum() != area.sum()
    with pytest.raises(UserError, match="bilinear, area"):
        resize_target_masks(masks, (2, 2), "nearest")


def test_area_resize_of_boxes_equals_pooling_the_whole_masks() -> None:
    """The per-box path (bool masks, whole factors) against torch's area pooling."""
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 64, 96, generator=generator) > 0.5
    masks[:, :, :40] = False  # boxes of different sizes and places, one empty mask
    masks[1, :30] = False
    masks[2] = False
    masks[3, :, 90:] = True
    expected = torch.nn.functional.interpolate(masks[:, None].float(), size=(16, 24), mode="area")
    torch.testing.assert_close(resize_target_masks(masks, (16, 24), "area"), expected[:, 0])
    torch.testing.assert_close(resize_target_masks(masks, (8, 12), "area"),
                               resize_target_masks(masks.float(), (8, 12), "area"))
