"""Hungarian matching of predicted instances to ground truth, as in SparseInst.

The cost is a pure function of one image's predictions and targets:
``dice(sigmoid(mask), gt) ** alpha * sigmoid(class_logit)[gt class] ** beta``.
``HungarianMatcher`` evaluates it per image and lets scipy pick the assignment
that maximises the total cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from sparseinst_cli.errors import RunError, UserError

DICE_EPS = 1e-4
"""Added to the dice denominator, in the matching cost and in the dice loss."""


def resize_target_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize ground-truth masks to the prediction resolution.

    masks: [M, Hp, Wp] bool/uint8/float, already padded to the batch's input size.
    Returns float32 [M, h, w], bilinear with ``align_corners=False`` (values in [0, 1]).
    """
    h, w = size
    masks = masks.float()
    if masks.shape[0] == 0:
        return masks.new_zeros((0, h, w))
    if tuple(masks.shape[-2:]) == (h, w):
        return masks
    return F.interpolate(masks[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]


def pairwise_dice(pred_probs: Tensor, gt: Tensor) -> Tensor:
    """Dice score of every prediction against every target.

    pred_probs: [N, P] probabilities; gt: [M, P] in [0, 1]. Returns [N, M]:
    ``2 * sum(p * g) / (sum(p^2) + sum(g^2) + 1e-4)``.
    """
    numerator = 2 * pred_probs @ gt.T
    denominator = (pred_probs * pred_probs).sum(-1)[:, None] + (gt * gt).sum(-1)[None, :]
    return numerator / (denominator + DICE_EPS)


@torch.no_grad()
def matching_cost(
    pred_logits: Tensor,
    pred_masks: Tensor,
    tgt_labels: Tensor,
    tgt_masks: Tensor,
    *,
    alpha: float = 0.8,
    beta: float = 0.2,
) -> Tensor:
    """Matching quality of one image's predictions against its targets (higher is better).

    pred_logits: [N, K] class logits; pred_masks: [N, P] mask logits (P = h * w);
    tgt_labels: [M] int64 in 0..K-1; tgt_masks: [M, P] float in [0, 1].
    Returns float32 [N, M] = dice(sigmoid(mask), gt) ** alpha * prob(gt class) ** beta,
    computed in float32 with autocast disabled and without gradient.
    """
    with torch.autocast(device_type=pred_masks.device.type, enabled=False):
        dice = pairwise_dice(pred_masks.float().sigmoid(), tgt_masks.float())
        class_prob = pred_logits.float().sigmoid()[:, tgt_labels]
        return dice.pow(alpha) * class_prob.pow(beta)


def _check_labels(target_labels: list[Tensor], num_classes: int) -> None:
    """Raise ``UserError`` if a label lies outside 0..num_classes-1 (the model cannot score it)."""
    labels = torch.cat([lab.reshape(-1) for lab in target_labels])
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise UserError(
            f"target label {bad} is outside 0..{num_classes - 1}: the dataset has more "
            f"categories than the model's num_classes ({num_classes})"
        )


def _empty_match() -> tuple[Tensor, Tensor]:
    empty = torch.empty(0, dtype=torch.int64)
    return empty, empty.clone()


class HungarianMatcher(nn.Module):
    """One-to-one assignment of predictions to targets per image (no learnable parameters)."""

    def __init__(self, *, alpha: float, beta: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta

    @torch.no_grad()
    def forward(
        self,
        outputs: dict[str, Tensor],
        target_masks: list[Tensor],
        target_labels: list[Tensor],
    ) -> list[tuple[Tensor, Tensor]]:
        """Match each image's predictions to its targets.

        outputs: ``pred_logits`` [B, N, K] and ``pred_masks`` [B, N, h, w] (logits).
        target_masks: B tensors [M_i, h, w] float in [0, 1], already at the prediction size.
        target_labels: B tensors [M_i] int64.
        Returns B pairs ``(pred_idx, tgt_idx)`` of CPU int64 tensors of length min(N, M_i),
        ``pred_idx`` ascending; an image without targets gets two empty tensors.
        """
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        batch, _, num_classes = pred_logits.shape
        if len(target_masks) != batch or len(target_labels) != batch:
            raise ValueError(
                f"got {len(target_masks)} mask and {len(target_labels)} label lists "
                f"for a batch of {batch} images"
            )
        _check_labels(target_labels, num_classes)
        for masks in target_masks:
            if masks.shape[0] and masks.shape[-2:] != pred_masks.shape[-2:]:
                raise ValueError(
                    f"target masks of size {tuple(masks.shape[-2:])} do not match predicted "
                    f"masks of size {tuple(pred_masks.shape[-2:])}; resize them first"
                )
        costs = [
            matching_cost(
                pred_logits[b],
                pred_masks[b].flatten(1),
                target_labels[b],
                target_masks[b].flatten(1),
                alpha=self.alpha,
                beta=self.beta,
            )
            for b in range(batch)
        ]
        # One device-to-host copy for the whole batch: [N, sum(M_i)].
        all_costs = torch.cat(costs, dim=1).cpu()
        if not torch.isfinite(all_costs).all():
            raise RunError(
                "non-finite matching cost: the model produced NaN/Inf predictions; "
                "lower the learning rate or enable gradient clipping"
            )
        sizes = [cost.shape[1] for cost in costs]
        indices = []
        for cost in all_costs.split(sizes, dim=1):
            if cost.shape[1] == 0:
                indices.append(_empty_match())
                continue
            rows, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices
