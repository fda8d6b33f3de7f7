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


TARGET_RESIZE_MODES = ("bilinear", "area")


def resize_target_masks(masks: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Resize ground-truth masks to the prediction resolution.

    masks: [M, Hp, Wp] bool/uint8/float, already padded to the batch's input size.
    Returns float32 [M, h, w] in [0, 1]. "bilinear" (``align_corners=False``, official) samples
    each cell near its centre; "area" gives the fraction of each cell the object covers, which
    keeps the boundary of an object only a few cells wide where it is.
    """
    if mode not in TARGET_RESIZE_MODES:
        modes = ", ".join(TARGET_RESIZE_MODES)
        raise UserError(f"mask target resize must be one of {modes}, got {mode!r}")
    h, w = size
    if masks.shape[0] == 0:
        return masks.new_zeros((0, h, w), dtype=torch.float32)
    if tuple(masks.shape[-2:]) == (h, w):
        return masks.float()
    if mode == "area":
        return _area_resize(masks, (h, w))
    masks = masks.float()
    return F.interpolate(masks[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]


def _area_resize(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Area resize of [M, H, W] masks; by a whole factor each instance's box alone is pooled, so
    many small objects in a large image cost their own area, not M full images."""
    (h, w), (height, width) = size, masks.shape[-2:]
    if height % h or width % w or masks.dtype != torch.bool:
        return F.interpolate(masks[:, None].float(), size=(h, w), mode="area")[:, 0]
    fy, fx = height // h, width // w
    out = masks.new_zeros((masks.shape[0], h, w), dtype=torch.float32)
    # Each instance's box in output cells, from its occupied rows and columns (one pass each).
    rows, cols = masks.any(2), masks.any(1)
    present = rows.any(1).tolist()
    top = rows.float().argmax(1).div(fy, rounding_mode="floor").tolist()
    bottom = (height - rows.flip(1).float().argmax(1) - 1).div(fy, rounding_mode="floor").tolist()
    left = cols.float().argmax(1).div(fx, rounding_mode="floor").tolist()
    right = (width - cols.flip(1).float().argmax(1) - 1).div(fx, rounding_mode="floor").tolist()
    for i, keep in enumerate(present):
        if not keep:
            continue
        y0, y1, x0, x1 = top[i], bottom[i] + 1, left[i], right[i] + 1
        crop = masks[i, y0 * fy : y1 * fy, x0 * fx : x1 * fx].float()
        out[i, y0:y1, x0:x1] = crop.view(y1 - y0, fy, x1 - x0, fx).mean((1, 3))
    return out


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


def centres_of_mass(masks: Tensor) -> Tensor:
    """[M, h, w] masks in [0, 1] -> [M, 2]: (x, y) of each one's centre of mass, in cells (cell
    i's centre at i); an empty mask gives (0, 0)."""
    h, w = masks.shape[-2:]
    masks = masks.float()
    mass = masks.flatten(1).sum(-1).clamp(min=1e-6)
    xs = torch.arange(w, device=masks.device, dtype=torch.float32)
    ys = torch.arange(h, device=masks.device, dtype=torch.float32)
    return torch.stack([masks.sum(1) @ xs / mass, masks.sum(2) @ ys / mass], -1)


def anchor_affinity(anchors: Tensor, tgt_masks: Tensor, size: tuple[int, int]) -> Tensor:
    """exp(-d^2), d: distance from each instance's anchor to each target's centre of mass, in
    the anchor's widths. anchors: [N, 3] (x, y in [0, 1], log width); tgt_masks: [M, h*w].
    Returns [N, M] in (0, 1]."""
    h, w = size
    cells = centres_of_mass(tgt_masks.reshape(-1, h, w))
    centres = (cells + 0.5) / torch.tensor([w, h], device=cells.device)  # in [0, 1]
    anchors = anchors.float()
    offsets = (anchors[:, None, :2] - centres[None]) * torch.exp(-anchors[:, None, 2:])
    return torch.exp(-offsets.square().sum(-1))


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

    def __init__(self, *, alpha: float, beta: float, anchor_power: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        # > 0 with query anchors: the cost also favours the instance whose anchor is nearest
        # the target, so which of two alike candidates owns an object stays the same from one
        # step to the next and the class head can learn it.
        self.anchor_power = anchor_power

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
        if self.anchor_power > 0 and "pred_anchors" in outputs:
            size = tuple(pred_masks.shape[-2:])
            costs = [
                cost * anchor_affinity(anchors, masks.flatten(1), size).pow(self.anchor_power)
                for cost, anchors, masks in zip(costs, outputs["pred_anchors"], target_masks)
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
