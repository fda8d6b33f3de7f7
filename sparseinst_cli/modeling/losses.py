"""SparseInst training losses: focal (classes), BCE and dice (masks), IoU objectness.

Small pure functions plus ``SparseInstCriterion``, which receives the matcher,
resizes the targets once, matches, and returns the weighted losses.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from sparseinst_cli.errors import UserError
from sparseinst_cli.modeling.matcher import (
    DICE_EPS,
    TARGET_RESIZE_MODES,
    HungarianMatcher,
    centres_of_mass,
    resize_target_masks,
)

IOU_PRED_THRESHOLD = 0.4
IOU_GT_THRESHOLD = 0.5
# Caps the activation-mass loss of a map with nothing on its object at -log(1e-4) = 9.2.
ACTIVATION_MASS_EPS = 1e-4


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Focal loss of RetinaNet, summed over all elements.

    logits, targets: same shape (e.g. [B, N, K]); targets in [0, 1]. A negative
    ``alpha`` disables the class balancing. Returns a scalar.
    """
    probs = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probs * targets + (1 - probs) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum()


def dice_loss(mask_logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss summed over instances.

    mask_logits: [M, P] logits; targets: [M, P] in [0, 1]. Returns a scalar:
    ``sum_i 1 - 2 * sum(p * g) / (sum(p^2) + sum(g^2) + 1e-4)`` with p = sigmoid(logits).
    """
    probs = mask_logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = (probs * probs).sum(-1) + (targets * targets).sum(-1)
    return (1 - numerator / (denominator + DICE_EPS)).sum()


def mask_bce(mask_logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy with logits, mean over all pixels of all instances.

    mask_logits, targets: [M, P]. Returns a scalar.
    """
    return F.binary_cross_entropy_with_logits(mask_logits, targets, reduction="mean")


@torch.no_grad()
def mask_iou(pred_probs: Tensor, gt: Tensor) -> Tensor:
    """IoU of ``pred_probs >= 0.4`` with ``gt > 0.5`` per instance, without gradient.

    pred_probs: [M, P] probabilities; gt: [M, P] in [0, 1]. Returns [M] float.
    """
    pred = (pred_probs >= IOU_PRED_THRESHOLD).float()
    gt = (gt > IOU_GT_THRESHOLD).float()
    intersection = (pred * gt).sum(-1)
    union = pred.sum(-1) + gt.sum(-1) - intersection
    return intersection / (union + 1e-6)


def activation_mass_loss(maps: Tensor, targets: Tensor) -> Tensor:
    """-log of the activation mass inside each instance's mask, mean over its groups, summed.

    maps: [T, G, P] activation maps of the matched instances, each summing to 1;
    targets: [T, P] their masks in [0, 1] at the maps' resolution. Returns a scalar.
    """
    mass = (maps * targets[:, None]).sum(-1)
    return -(mass + ACTIVATION_MASS_EPS).log().mean(-1).sum()


def centre_targets(masks: Tensor, *, oriented: bool = False) -> Tensor:
    """[M, h, w] instance masks in [0, 1] -> [h, w] centre heatmap (CenterNet's): per object a
    Gaussian around its centre of mass, sigma a quarter of the square root of its area (at
    least half a cell), exactly 1 at the cell nearest that centre; the maximum over objects.

    oriented: each Gaussian is the object's own ellipse instead (its covariance 0.785 times the
    mask's: for a disk both give the same sigma), around the object cell nearest its centre of
    mass (a bent rod's centre of mass can lie outside it). A round Gaussian as wide as a long
    rod's square root of area spreads over the rods touching its sides, so theirs merge.
    """
    h, w = masks.shape[-2:]
    mass = masks.flatten(1).sum(-1)
    masks, mass = masks[mass > 0], mass[mass > 0]
    if masks.shape[0] == 0:
        return masks.new_zeros((h, w))
    cx, cy = centres_of_mass(masks).unbind(-1)
    ys = torch.arange(h, device=masks.device, dtype=torch.float32)
    xs = torch.arange(w, device=masks.device, dtype=torch.float32)
    if oriented:
        heat, cx, cy = _oriented_gaussians(masks.float(), mass, cx, cy, xs, ys)
    else:
        sigma2 = (mass.sqrt() / 4).clamp(min=0.5).square()
        dist2 = (ys - cy[:, None]).square()[:, :, None] + (xs - cx[:, None]).square()[:, None, :]
        heat = torch.exp(-dist2 / (2 * sigma2[:, None, None]))
    iy, ix = cy.round().long().clamp(0, h - 1), cx.round().long().clamp(0, w - 1)
    heat[torch.arange(len(mass), device=masks.device), iy, ix] = 1.0
    return heat.amax(0)


# sqrt(area)/4 squared over the variance of a disk along one axis (r^2/4): pi/4.
_COVARIANCE_SCALE = math.pi / 4


def _oriented_gaussians(
    masks: Tensor, mass: Tensor, cx: Tensor, cy: Tensor, xs: Tensor, ys: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per mask a Gaussian with the mask's covariance (times pi/4, eigenvalues at least 1/4
    cell^2) around the mask cell nearest its centre of mass: [M, h, w] and that cell's x, y."""
    dx, dy = xs - cx[:, None], ys - cy[:, None]  # [M, w], [M, h]
    var_x = (masks.sum(1) * dx.square()).sum(-1) / mass
    var_y = (masks.sum(2) * dy.square()).sum(-1) / mass
    cov_xy = torch.einsum("mhw,mh,mw->m", masks, dy, dx) / mass
    cov = torch.stack([var_x, cov_xy, cov_xy, var_y], -1).reshape(-1, 2, 2) * _COVARIANCE_SCALE
    values, vectors = torch.linalg.eigh(cov)
    inverse = vectors @ torch.diag_embed(1 / values.clamp(min=0.25)) @ vectors.transpose(1, 2)
    # the object cell nearest the centre of mass
    dist2 = dy.square()[:, :, None] + dx.square()[:, None, :]
    nearest = torch.where(masks > 0, dist2, torch.inf).flatten(1).argmin(-1)
    cy, cx = (nearest // masks.shape[-1]).float(), (nearest % masks.shape[-1]).float()
    dx, dy = xs - cx[:, None], ys - cy[:, None]
    quad = (inverse[:, 0, 0, None, None] * dx.square()[:, None, :]
            + inverse[:, 1, 1, None, None] * dy.square()[:, :, None]
            + 2 * inverse[:, 0, 1, None, None] * dy[:, :, None] * dx[:, None, :])
    return torch.exp(-quad / 2), cx, cy


def centre_focal_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """CenterNet's penalty-reduced focal loss of centre heatmaps, over the number of centres.

    logits, targets: [B, 1, h, w]; targets are 1 at centres and Gaussian around them.
    """
    centres = targets == 1
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    prob = logits.sigmoid()
    positive = ((1 - prob).square() * log_p)[centres].sum()
    negative = ((1 - targets).pow(4) * prob.square() * log_not_p)[~centres].sum()
    return -(positive + negative) / centres.sum().clamp(min=1)


def average_num_instances(count: int, device: torch.device | str) -> float:
    """Loss normaliser: the batch's target count averaged over processes, at least 1.

    With torch.distributed initialised the counts are summed over all processes
    (all-reduce) and divided by the world size, as in DETR and the official SparseInst.
    """
    num = torch.tensor(float(count), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num)
        num = num / dist.get_world_size()
    return max(float(num.item()), 1.0)


def _matched_query_index(
    indices: list[tuple[Tensor, Tensor]], device: torch.device
) -> tuple[Tensor, Tensor]:
    """(batch_idx [T], query_idx [T]) of the matched predictions, T = total matches."""
    batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src for src, _ in indices])
    return batch_idx.to(device), query_idx.to(device)


def _matched_targets(
    tgt_labels: list[Tensor], tgt_masks: list[Tensor], indices: list[tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor]:
    """Labels [T] and flattened masks [T, h*w] of the matched targets, in match order."""
    labels, masks = [], []
    for lab, mask, (_, tgt) in zip(tgt_labels, tgt_masks, indices, strict=True):
        tgt = tgt.to(lab.device)
        labels.append(lab[tgt])
        masks.append(mask[tgt].flatten(1))
    return torch.cat(labels), torch.cat(masks)


class SparseInstCriterion(nn.Module):
    """Matches predictions to targets and computes the weighted SparseInst losses."""

    def __init__(
        self,
        *,
        matcher: HungarianMatcher,
        num_classes: int,
        class_weight: float,
        mask_bce_weight: float,
        dice_weight: float,
        objectness_weight: float,
        iam_weight: float,
        target_resize: str,
        centre_weight: float = 0.0,
        oriented_centres: bool = False,
        focal_alpha: float,
        focal_gamma: float,
    ) -> None:
        super().__init__()
        if target_resize not in TARGET_RESIZE_MODES:  # before training starts, not at step 1
            modes = ", ".join(TARGET_RESIZE_MODES)
            raise UserError(f"loss.target_resize must be one of {modes}, got {target_resize!r}")
        self.matcher = matcher
        self.num_classes = num_classes
        self.class_weight = class_weight
        self.mask_bce_weight = mask_bce_weight
        self.dice_weight = dice_weight
        self.objectness_weight = objectness_weight
        self.iam_weight = iam_weight
        self.centre_weight = centre_weight
        self.oriented_centres = oriented_centres
        self.target_resize = target_resize
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def forward(
        self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Weighted losses for one batch, computed in float32 even under autocast.

        outputs: ``pred_logits`` [B, N, K], ``pred_scores`` [B, N, 1], ``pred_masks``
        [B, N, h, w] (all logits; masks at stride 4 of the padded input).
        targets: B dicts with ``labels`` int64 [M_i] and ``masks`` bool/uint8
        [M_i, Hp, Wp] padded to the batch's input size (M_i may be 0).
        Returns scalars ``loss_cls``, ``loss_mask_bce``, ``loss_dice``, ``loss_objectness``.
        """
        pred_logits = outputs["pred_logits"]
        pred_masks = outputs["pred_masks"]
        if pred_logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"pred_logits has {pred_logits.shape[-1]} classes, "
                f"the criterion expects {self.num_classes}"
            )
        device = pred_masks.device
        size = (pred_masks.shape[-2], pred_masks.shape[-1])
        with torch.autocast(device_type=device.type, enabled=False):
            tgt_masks = [
                resize_target_masks(t["masks"].to(device), size, self.target_resize)
                for t in targets
            ]
            tgt_labels = [t["labels"].to(device=device, dtype=torch.int64) for t in targets]
            indices = self.matcher(outputs, tgt_masks, tgt_labels)
            num_instances = average_num_instances(sum(len(lab) for lab in tgt_labels), device)

            batch_idx, query_idx = _matched_query_index(indices, device)
            matched_labels, matched_gt = _matched_targets(tgt_labels, tgt_masks, indices)
            losses = {
                "loss_cls": self._loss_cls(
                    pred_logits, batch_idx, query_idx, matched_labels, num_instances
                )
            }
            losses.update(
                self._loss_masks(outputs, batch_idx, query_idx, matched_gt, num_instances)
            )
            if self.iam_weight > 0:
                losses["loss_iam"] = self._loss_iam(
                    outputs["pred_iam"], tgt_masks, tgt_labels, indices, batch_idx, query_idx,
                    num_instances,
                )
            if self.centre_weight > 0:
                losses["loss_centre"] = self._loss_centre(outputs["pred_centre_map"], tgt_masks)
        return losses

    def _loss_centre(self, logits: Tensor, tgt_masks: list[Tensor]) -> Tensor:
        """Centre heatmap loss; logits [B, 1, h, w] at the mask branch's stride (the targets
        are at stride 4: resized when the branch ends at stride 8)."""
        size = logits.shape[-2:]
        targets = torch.stack([
            centre_targets(m if m.shape[-2:] == size
                           else resize_target_masks(m, size, self.target_resize),
                           oriented=self.oriented_centres)
            for m in tgt_masks
        ])
        return self.centre_weight * centre_focal_loss(logits.float(), targets[:, None])

    def _loss_iam(
        self,
        maps: Tensor,
        tgt_masks: list[Tensor],
        tgt_labels: list[Tensor],
        indices: list[tuple[Tensor, Tensor]],
        batch_idx: Tensor,
        query_idx: Tensor,
        num_instances: float,
    ) -> Tensor:
        """Activation-map mass loss of the matched instances; maps [B, G, N, h, w], target
        masks at the mask prediction's (finer) size, resized from there: far fewer pixels."""
        h, w = maps.shape[-2:]
        maps = maps.float().flatten(3)
        if batch_idx.numel() == 0:
            return maps.sum() * 0.0
        matched = maps[batch_idx, :, query_idx]  # [T, G, h*w]
        small = [resize_target_masks(m, (h, w), self.target_resize) for m in tgt_masks]
        _, gt = _matched_targets(tgt_labels, small, indices)
        return self.iam_weight * activation_mass_loss(matched, gt) / num_instances

    def _loss_cls(
        self,
        pred_logits: Tensor,
        batch_idx: Tensor,
        query_idx: Tensor,
        matched_labels: Tensor,
        num_instances: float,
    ) -> Tensor:
        """Focal loss over all B * N queries; one-hot targets [B, N, K] for matched queries."""
        logits = pred_logits.float()
        one_hot = torch.zeros_like(logits)
        one_hot[batch_idx, query_idx, matched_labels] = 1.0
        focal = sigmoid_focal_loss(logits, one_hot, alpha=self.focal_alpha, gamma=self.focal_gamma)
        return self.class_weight * focal / num_instances

    def _loss_masks(
        self,
        outputs: dict[str, Tensor],
        batch_idx: Tensor,
        query_idx: Tensor,
        matched_gt: Tensor,
        num_instances: float,
    ) -> dict[str, Tensor]:
        """Mask BCE, dice and objectness on the T matched queries; matched_gt is [T, h*w]."""
        pred_masks, pred_scores = outputs["pred_masks"], outputs["pred_scores"]
        if matched_gt.shape[0] == 0:
            # Zero, but connected to the graph so DDP sees every parameter used.
            zero_masks = pred_masks.float().sum() * 0.0
            return {
                "loss_mask_bce": zero_masks,
                "loss_dice": zero_masks.clone(),
                "loss_objectness": pred_scores.float().sum() * 0.0,
            }
        src_masks = pred_masks[batch_idx, query_idx].float().flatten(1)  # [T, h*w]
        src_scores = pred_scores[batch_idx, query_idx].float().flatten()  # [T]
        iou = mask_iou(src_masks.detach().sigmoid(), matched_gt)
        return {
            "loss_mask_bce": self.mask_bce_weight * mask_bce(src_masks, matched_gt),
            "loss_dice": self.dice_weight * dice_loss(src_masks, matched_gt) / num_instances,
            "loss_objectness": self.objectness_weight
            * F.binary_cross_entropy_with_logits(src_scores, iou, reduction="mean"),
        }
