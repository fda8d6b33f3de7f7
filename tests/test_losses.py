"""Tests for the SparseInst losses and criterion, against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from sparseinst_cli.errors import UserError
from sparseinst_cli.modeling import losses
from sparseinst_cli.modeling.losses import (
    SparseInstCriterion,
    average_num_instances,
    dice_loss,
    mask_bce,
    mask_iou,
    sigmoid_focal_loss,
)
from sparseinst_cli.modeling.matcher import HungarianMatcher

EPS = 1e-4
LN2 = math.log(2.0)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# The official loss weights and focal parameters, which the hand-worked values below assume.
OFFICIAL = {"class_weight": 2.0, "mask_bce_weight": 5.0, "dice_weight": 2.0,
            "objectness_weight": 1.0, "iam_weight": 0.0, "target_resize": "bilinear",
            "focal_alpha": 0.25, "focal_gamma": 2.0}


def make_criterion(num_classes: int, **weights: float) -> SparseInstCriterion:
    return SparseInstCriterion(matcher=HungarianMatcher(alpha=0.8, beta=0.2, anchor_power=0.0),
                               num_classes=num_classes, **{**OFFICIAL, **weights})


def test_sigmoid_focal_loss_by_formula() -> None:
    logits = torch.tensor([0.0, 2.0, -1.0])
    targets = torch.tensor([1.0, 0.0, 1.0])
    # loss = alpha_t * (1 - p_t)^2 * ce, alpha_t = 0.25 for positives, 0.75 for negatives.
    p2, pm1 = sigmoid(2.0), sigmoid(-1.0)
    expected = (
        0.25 * 0.5**2 * LN2
        + 0.75 * p2**2 * math.log(1 + math.exp(2.0))
        + 0.25 * (1 - pm1) ** 2 * -math.log(pm1)
    )
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_sigmoid_focal_loss_matches_torchvision() -> None:
    ops = pytest.importorskip("torchvision.ops")
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 5, 4, generator=gen)
    targets = (torch.rand(2, 5, 4, generator=gen) > 0.7).float()
    expected = ops.sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="sum")
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets), expected)


def test_dice_loss_by_hand() -> None:
    logits = torch.zeros(2, 4)  # p = 0.5 everywhere, sum(p^2) = 1
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    expected = (1 - 2 * 1.0 / (1 + 2 + EPS)) + (1 - 2 * 2.0 / (1 + 4 + EPS))
    assert dice_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_mask_bce_is_a_mean_over_pixels() -> None:
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    expected = (3 * LN2 + math.log(1 + math.exp(-2.0))) / 4
    assert mask_bce(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_mask_iou_thresholds() -> None:
    probs = torch.tensor([[0.4, 0.39, 0.9, 0.1], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    gt = torch.tensor([[1.0, 1.0, 0.6, 0.5], [0.0, 0.0, 0.0, 0.0]])
    iou = mask_iou(probs, gt)  # pred [1,0,1,0], gt [1,1,1,0] -> 2 / 3; empty vs empty -> 0
    torch.testing.assert_close(iou, torch.tensor([2 / 3, 0.0]))
    assert not iou.requires_grad


def _random_outputs(
    b: int, n: int, k: int, hp: int, wp: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "pred_logits": torch.randn(b, n, k, generator=gen).requires_grad_(),
        "pred_scores": torch.randn(b, n, 1, generator=gen).requires_grad_(),
        "pred_masks": torch.randn(b, n, hp // 4, wp // 4, generator=gen).requires_grad_(),
    }


def _random_targets(sizes: list[int], k: int, hp: int, wp: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        {
            "labels": torch.randint(0, k, (m,), generator=gen),
            "masks": torch.rand(m, hp, wp, generator=gen) > 0.5,
        }
        for m in sizes
    ]


def test_criterion_tiny_batch_finite_with_gradients() -> None:
    outputs = _random_outputs(2, 4, 3, 32, 32)
    targets = _random_targets([2, 1], 3, 32, 32)
    result = make_criterion(3)(outputs, targets)
    assert set(result) == {"loss_cls", "loss_mask_bce", "loss_dice", "loss_objectness"}
    for value in result.values():
        assert value.ndim == 0 and torch.isfinite(value)
    sum(result.values()).backward()
    for key in ("pred_logits", "pred_scores", "pred_masks"):
        grad = outputs[key].grad
        assert grad is not None and grad.abs().sum() > 0, key


def test_objectness_target_is_the_hand_computed_iou() -> None:
    # 8x8 input -> 2x2 predictions; the target covers the top-left 4x4 block -> [[1,0],[0,0]].
    gt = torch.zeros(1, 8, 8, dtype=torch.bool)
    gt[0, :4, :4] = True
    targets = [{"labels": torch.tensor([0]), "masks": gt}]
    outputs = {
        "pred_logits": torch.zeros(1, 1, 1, requires_grad=True),
        "pred_scores": torch.full((1, 1, 1), 1.0, requires_grad=True),
        # probs [[0.73, 0.73], [0.27, 0.27]] -> predicted top row: IoU = 1 / 2.
        "pred_masks": torch.tensor([[[[1.0, 1.0], [-1.0, -1.0]]]], requires_grad=True),
    }
    result = make_criterion(1)(outputs, targets)
    iou = 0.5
    expected = -(iou * math.log(sigmoid(1.0)) + (1 - iou) * math.log(1 - sigmoid(1.0)))
    assert result["loss_objectness"].item() == pytest.approx(expected, rel=1e-6)
    # The IoU target carries no gradient: only pred_scores receives one.
    result["loss_objectness"].backward()
    assert outputs["pred_masks"].grad is None
    assert outputs["pred_scores"].grad is not None


def test_losses_are_normalised_by_the_batch_total() -> None:
    # Two images with 2 and 1 targets: num_instances = 3. Every logit is 0, so every
    # prediction is p = 0.5 and the matching does not change the loss values.
    b, n, k, hp, wp = 2, 4, 3, 8, 8  # 2x2 predictions, P = 4
    outputs = {
        "pred_logits": torch.zeros(b, n, k, requires_grad=True),
        "pred_scores": torch.zeros(b, n, 1, requires_grad=True),
        "pred_masks": torch.zeros(b, n, hp // 4, wp // 4, requires_grad=True),
    }
    full = torch.ones(8, 8, dtype=torch.bool)  # resized: 4 pixels of 1
    block = torch.zeros(8, 8, dtype=torch.bool)
    block[:4, :4] = True  # resized: 1 pixel of 1
    targets = [
        {"labels": torch.tensor([0, 2]), "masks": torch.stack([full, block])},
        {"labels": torch.tensor([1]), "masks": full[None]},
    ]
    result = make_criterion(k)(outputs, targets)

    focal_pos, focal_neg = 0.25 * 0.25 * LN2, 0.75 * 0.25 * LN2
    matched, queries = 3, b * n * k
    expected_cls = 2.0 * (matched * focal_pos + (queries - matched) * focal_neg) / 3
    dice_full = 1 - 2 * 2.0 / (1 + 4 + EPS)
    dice_block = 1 - 2 * 0.5 / (1 + 1 + EPS)
    expected_dice = 2.0 * (2 * dice_full + dice_block) / 3
    assert result["loss_cls"].item() == pytest.approx(expected_cls, rel=1e-6)
    assert result["loss_dice"].item() == pytest.approx(expected_dice, rel=1e-6)
    assert result["loss_mask_bce"].item() == pytest.approx(5.0 * LN2, rel=1e-6)


def test_num_instances_all_reduced_over_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_all_reduce(tensor: torch.Tensor) -> None:
        tensor += 5.0  # the other process holds 5 targets

    monkeypatch.setattr(losses.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(losses.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(losses.dist, "all_reduce", fake_all_reduce)
    assert average_num_instances(3, "cpu") == pytest.approx(4.0)  # (3 + 5) / 2


def test_num_instances_is_at_least_one() -> None:
    assert average_num_instances(0, "cpu") == 1.0
    assert average_num_instances(7, "cpu") == 7.0


def test_batch_without_targets_gives_zero_connected_mask_losses() -> None:
    outputs = _random_outputs(2, 4, 3, 32, 32)
    targets = _random_targets([0, 0], 3, 32, 32)
    result = make_criterion(3)(outputs, targets)
    for key in ("loss_mask_bce", "loss_dice", "loss_objectness"):
        assert result[key].item() == 0.0 and result[key].requires_grad
    assert result["loss_cls"].item() > 0
    sum(result.values()).backward()
    for key in ("pred_logits", "pred_scores", "pred_masks"):
        assert outputs[key].grad is not None, key


def test_criterion_runs_in_float32_under_autocast() -> None:
    outputs = {
        k: v.detach().bfloat16().requires_grad_()
        for k, v in _random_outputs(2, 4, 3, 32, 32).items()
    }
    targets = _random_targets([2, 1], 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = make_criterion(3)(outputs, targets)
    for value in result.values():
        assert value.dtype == torch.float32 and torch.isfinite(value)
    sum(result.values()).backward()
    assert outputs["pred_masks"].grad is not None


def test_criterion_rejects_wrong_class_count() -> None:
    outputs = _random_outputs(1, 4, 3, 32, 32)
    with pytest.raises(ValueError, match="classes"):
        make_criterion(5)(outputs, _random_targets([1], 3, 32, 32))


def test_unknown_target_resize_is_refused_when_the_criterion_is_built() -> None:
    with pytest.raises(UserError, match="loss.target_resize must be one of bilinear, area"):
        make_criterion(2, target_resize="nearest")
