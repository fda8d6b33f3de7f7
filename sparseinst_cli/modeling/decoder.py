"""IAM decoder: instance branch (IAM / G-IAM / G-IAM softmax) and mask branch."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .fast.layers import is_plain_3x3
from .init import c2_msra_fill, c2_xavier_fill

DECODER_KINDS = ("iam", "giam", "giam_softmax")
# Initial inverse squared spread of the location prior, per stride-8 cell: a mask logit falls
# by 1 at 2.8 cells (22 px) from the instance's centre, before the kernels sharpen it.
INITIAL_SPREAD = 0.125
# Initial width of peak anchors, in stride-8 cells: about a small object's radius.
PEAK_WIDTH_CELLS = 1.5
# Subtracted from the centre logits of cells that are not local maxima: they rank after all.
NOT_A_PEAK = 1e4


def conv_stack(num_convs: int, in_channels: int, channels: int) -> nn.Sequential:
    """`num_convs` x (3x3 conv + ReLU); official key indices 0, 2, 4, 6 for the convs."""
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        c2_msra_fill(conv)
        layers += [conv, nn.ReLU(inplace=True)]
        in_channels = channels
    return nn.Sequential(*layers)


def coordinate_features(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 2, H, W]: x then y, each -1 + 2*i/(n-1) (traceable for ONNX)."""
    h, w = x.shape[-2:]
    ys = -1.0 + 2.0 * torch.arange(h, device=x.device, dtype=torch.float32) / (h - 1)
    xs = -1.0 + 2.0 * torch.arange(w, device=x.device, dtype=torch.float32) / (w - 1)
    grid_y = ys[:, None].expand(h, w)
    grid_x = xs[None, :].expand(h, w)
    coords = torch.stack([grid_x, grid_y])[None].expand(x.shape[0], 2, h, w)
    return coords.to(x.dtype)


def activation_centres(
    maps: torch.Tensor, size: tuple[int, int], groups: int, num_masks: int
) -> torch.Tensor:
    """Centre of mass of each instance's activation maps, averaged over its groups.

    maps: [B, groups*N, H*W], each summing to 1. Returns [B, N, 2] as (x, y) in cells.
    """
    h, w = size
    ys = torch.arange(h, device=maps.device, dtype=torch.float32)
    xs = torch.arange(w, device=maps.device, dtype=torch.float32)
    grid = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], -1).reshape(-1, 2)
    # fp32 under autocast: bf16 would round a centre 50 cells out by up to a quarter cell.
    with torch.autocast(maps.device.type, enabled=False):
        centres = maps.float() @ grid  # [B, groups*N, 2]
    return centres.reshape(maps.shape[0], groups, num_masks, 2).mean(1)


def centre_penalty(
    centres: torch.Tensor, spread: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Location prior subtracted from the mask logits: spread * squared distance to the centre.

    centres: [B, N, 2] (x, y in cells of `size`); spread: [B, N, 1] >= 0. Returns [B, N, H*W].
    It lets a linear mask kernel, which sees the same features at every object alike, keep its
    mask on its own object among many similar ones (what CondInst's relative coordinates do).
    """
    h, w = size
    dx = torch.arange(w, device=centres.device, dtype=centres.dtype) - centres[..., :1]
    dy = torch.arange(h, device=centres.device, dtype=centres.dtype) - centres[..., 1:]
    dist2 = dy.square()[..., :, None] + dx.square()[..., None, :]  # [B, N, H, W]
    return (spread[..., None] * dist2).flatten(2)


def subtract_centre_penalty(
    masks: torch.Tensor, centres: torch.Tensor, spread: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """masks [B, N, H*W] - `centre_penalty` -> fp32 [B, N, H, W]; in training by
    `CentrePenalty`, which gives the same values in less time."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (masks, centres, spread)):
        return CentrePenalty.apply(masks, centres, spread, size)
    penalty = centre_penalty(centres, spread, size)
    return (masks - penalty).unflatten(2, size).float()


class CentrePenalty(torch.autograd.Function):
    """masks - spread * ((x - cx)^2 + (y - cy)^2), fp32 [B, N, H, W], computed as two broadcast
    subtractions. Its backward reads the gradient twice (its row and column sums give the
    centres' and spreads' gradients) where autograd's chain makes eight full passes over the
    stride-4 masks of every query (crowded stand-in, 120 queries: 3-5% of a CPU training step)."""

    @staticmethod
    def forward(ctx, masks, centres, spread, size):
        h, w = size
        dtype = torch.promote_types(masks.dtype, torch.float32)  # fp32 (fp64 in gradcheck)
        xs = torch.arange(w, device=masks.device, dtype=dtype)
        ys = torch.arange(h, device=masks.device, dtype=dtype)
        spread = spread.to(dtype)
        dx = xs - centres[..., :1].to(dtype)  # [B, N, W]
        dy = ys - centres[..., 1:].to(dtype)  # [B, N, H]
        out = masks.unflatten(2, size) - (spread * dy.square())[..., None]
        out.sub_((spread * dx.square())[..., None, :])
        ctx.save_for_backward(dx, dy, spread)
        ctx.dtypes = (centres.dtype, spread.dtype)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        dx, dy, spread = ctx.saved_tensors
        rows, cols = grad.sum(-1), grad.sum(-2)  # [B, N, H], [B, N, W]
        grad_masks = grad.flatten(2) if ctx.needs_input_grad[0] else None
        grad_centres = grad_spread = None
        if ctx.needs_input_grad[1]:  # d/dcx = 2 * spread * (x - cx), likewise y
            moments = torch.stack([(cols * dx).sum(-1), (rows * dy).sum(-1)], -1)
            grad_centres = (2 * spread * moments).to(ctx.dtypes[0])
        if ctx.needs_input_grad[2]:
            dist2 = (rows * dy.square()).sum(-1) + (cols * dx.square()).sum(-1)
            grad_spread = (-dist2[..., None]).to(ctx.dtypes[1])
        return grad_masks, grad_centres, grad_spread, None


def halton_points(count: int) -> torch.Tensor:
    """[count, 2] points spread evenly over the unit square for any count (Halton sequence,
    bases 2 and 3; a grid would leave a ragged last row)."""

    def radical_inverse(i: int, base: int) -> float:
        value, scale = 0.0, 1.0 / base
        while i:
            i, digit = divmod(i, base)
            value += digit * scale
            scale /= base
        return value

    points = [[radical_inverse(i, 2), radical_inverse(i, 3)] for i in range(1, count + 1)]
    return torch.tensor(points)


def anchor_penalty(
    points: torch.Tensor, log_width: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Squared distance of each cell centre to each anchor over the anchor's width^2, fp32.

    points: [..., N, 2] (x, y in [0, 1] of the map); log_width: [..., N] (log of the width in
    the same unit). Returns [..., N, H*W].
    """
    h, w = size
    xs = (torch.arange(w, device=points.device, dtype=torch.float32) + 0.5) / w
    ys = (torch.arange(h, device=points.device, dtype=torch.float32) + 0.5) / h
    points = points.float()
    dx, dy = xs - points[..., :1], ys - points[..., 1:]  # [..., N, W], [..., N, H]
    dist2 = dy.square()[..., :, None] + dx.square()[..., None, :]
    return (dist2 * torch.exp(-2 * log_width.float())[..., None, None]).flatten(-2)


def anchor_offsets(
    centres: torch.Tensor, points: torch.Tensor, log_width: torch.Tensor
) -> torch.Tensor:
    """centres, points [B, N, 2] (x, y in [0, 1]), log_width [B, N] -> [B, N, 3]: (dx, dy,
    dx^2 + dy^2) of each map's centre from its anchor, in widths: how far from home its map
    found an object."""
    offset = (centres - points.float()) * torch.exp(-log_width.float())[..., None]
    return torch.cat([offset, offset.square().sum(-1, keepdim=True)], -1)


@torch.no_grad()
def heatmap_peaks(logits: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` highest local maxima (3x3) of centre heatmaps as anchor points, in raster order.

    logits: [B, 1, H, W]. Returns [B, count, 2]: (x, y) cell centres in [0, 1]. Other cells rank
    after all maxima, so a map with fewer objects than `count` still yields `count` distinct
    points (CenterNet's peak extraction, no NMS). Raster order, not score order: a near tie
    between two peaks, which another runtime may break the other way, does not reorder them.
    """
    h, w = logits.shape[-2:]
    if count > h * w:
        raise UserError(f"the input is too small for {count} instances on peak anchors: their "
                        f"heatmap has {h}x{w} cells; use a larger input or fewer num_masks")
    logits = logits.float()
    is_peak = logits == F.max_pool2d(logits, 3, stride=1, padding=1)
    ranked = torch.where(is_peak, logits, logits - NOT_A_PEAK).flatten(1)
    index = ranked.topk(count, dim=1).indices.sort(dim=1).values  # [B, count]
    xs = ((index % w).float() + 0.5) / w
    ys = (index.div(w, rounding_mode="floor").float() + 0.5) / h
    return torch.stack([xs, ys], -1)


class SigmoidNormalise(torch.autograd.Function):
    """sigmoid(x) / sum(sigmoid(x)) over the last dim, with a fused backward.

    The same values as the plain expression; autograd's chain for it (division, sum, sigmoid)
    makes ten passes over the maps, most into fresh memory, and this backward three. Profiled on
    the crowded stand-in (120 queries x 4 groups), the ops on the maps fell from about 350 to 90
    ms of a CPU training step, with the contiguous layout of `activation_maps`.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor) -> torch.Tensor:
        maps = logits.sigmoid()
        total = maps.sum(-1, keepdim=True).clamp_(min=1e-6)
        maps.div_(total)
        ctx.save_for_backward(maps, total)
        return maps

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # m = p / s, p = sigmoid(x): dL/dx = (g - sum(g * m)) * m * (1 - p), with p = m * s.
        maps, total = ctx.saved_tensors
        inner = torch.linalg.vecdot(grad, maps).unsqueeze(-1)
        one_minus_prob = torch.addcmul(torch.ones_like(total), maps, total, value=-1)
        return (grad - inner).mul_(maps).mul_(one_minus_prob)


class PeakAnchors(nn.Module):
    """Anchors placed on the peaks of a predicted centre heatmap, one instance per peak.

    Learned anchor points are the same for every image, so where objects crowd more than the
    anchors do some objects have no instance near them; peaks follow the objects of each image.
    The anchor width is one learned value, in cells of the instance features.
    """

    no_weight_decay = True

    def __init__(self, count: int, width_cells: float = PEAK_WIDTH_CELLS):
        super().__init__()
        self.count = count
        self.log_width = nn.Parameter(torch.tensor(math.log(width_cells)))

    def forward(
        self, heatmap: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre heatmap logits [B, 1, h', w'] -> points [B, N, 2] in [0, 1] and log widths
        [B, N] in the unit of the points (the width in cells over the mean side of `size`)."""
        points = heatmap_peaks(heatmap, self.count)
        # A tensor op, not math.log: traced for ONNX, the size stays dynamic.
        side = torch.ones((), device=points.device) * ((size[0] + size[1]) / 2)
        log_width = (self.log_width - torch.log(side)).expand(points.shape[:2])
        return points, log_width


class QueryAnchors(nn.Module):
    """A learned anchor point and width per instance, in the unit square of the feature map.

    Subtracting `penalty` from the raw activation logits keeps instance i's map around its
    anchor (Anchor DETR's idea, for activation maps): among many alike objects each map settles
    on a near one instead of spreading over all. Anchors start evenly spread, widths at their
    spacing.
    """

    # Positions and widths: weight decay would pull every anchor into the image's corner.
    no_weight_decay = True

    def __init__(self, count: int):
        super().__init__()
        self.points = nn.Parameter(halton_points(count))
        self.log_width = nn.Parameter(torch.full((count,), -0.5 * math.log(count)))

    def forward(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Points [B, N, 2] in [0, 1] and log widths [B, N], the same for every image."""
        return (self.points[None].expand(batch, -1, -1),
                self.log_width[None].expand(batch, -1))


class InstanceBranch(nn.Module):
    """Features -> per-instance class logits, mask kernels and objectness via activation maps."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        kind: str,
        num_masks: int,
        groups: int,
        dim: int,
        num_convs: int,
        kernel_dim: int,
        centre_prior: bool,
        query_anchors: bool,
        peak_anchors: bool = False,
    ):
        super().__init__()
        self.kind = kind  # checked with the rest of the config: modeling.build
        self.groups = 1 if kind == "iam" else groups
        self.num_masks = num_masks
        self.inst_convs = conv_stack(num_convs, in_channels, dim)
        self.iam_conv = nn.Conv2d(dim, num_masks * self.groups, 3, padding=1, groups=self.groups)
        head_dim = dim * self.groups
        if kind != "iam":
            self.fc = nn.Linear(head_dim, head_dim)
            c2_xavier_fill(self.fc)
        if kind == "giam_softmax":
            self.softmax_bias = nn.Parameter(torch.ones(1))
        self.cls_score = nn.Linear(head_dim, num_classes)
        self.mask_kernel = nn.Linear(head_dim, kernel_dim)
        self.objectness = nn.Linear(head_dim, 1)
        # Location prior: each instance's width, as the inverse squared spread of its mask.
        self.mask_spread: nn.Linear | None = None
        if centre_prior:
            self.mask_spread = nn.Linear(head_dim, 1)
            nn.init.normal_(self.mask_spread.weight, std=0.01)
            nn.init.constant_(self.mask_spread.bias, math.log(math.expm1(INITIAL_SPREAD)))
        self.anchors: PeakAnchors | QueryAnchors | None = None
        if peak_anchors:
            self.anchors = PeakAnchors(num_masks)
        elif query_anchors:
            self.anchors = QueryAnchors(num_masks)
        if self.anchors is not None:
            # Where its object lies from its anchor lets an instance tell whether the object
            # is its own or a neighbour's, which one-to-one matching asks it to learn.
            self.offset_embed = nn.Linear(3, head_dim)
            nn.init.zeros_(self.offset_embed.weight)
            nn.init.zeros_(self.offset_embed.bias)
        prior_bias = -math.log((1 - 0.01) / 0.01)
        for module in (self.iam_conv, self.cls_score):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.constant_(module.bias, prior_bias)
        nn.init.normal_(self.mask_kernel.weight, std=0.01)
        nn.init.constant_(self.mask_kernel.bias, 0.0)

    def activation_maps(
        self, features: torch.Tensor, anchors: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """[B, C, H, W] (+ anchor points [B, N, 2] and log widths [B, N]) -> normalised
        activation maps [B, groups*N, H*W] (each sums to 1)."""
        # Contiguous: the conv's channels-last output makes every op on the maps stride over
        # all channels.
        iam = self.iam_conv(features).flatten(2).contiguous()
        if anchors is not None:  # channels are group-major: the N priors apply to every group
            penalty = anchor_penalty(*anchors, features.shape[-2:])
            iam = (iam.unflatten(1, (self.groups, -1)) - penalty[:, None]).flatten(1, 2)
        return self.normalise(iam)

    def anchor_points(
        self, batch: int, size: tuple[int, int], heatmap: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Points [B, N, 2] and log widths [B, N] of the anchors, if the branch has any."""
        if isinstance(self.anchors, PeakAnchors):
            if heatmap is None:
                raise ValueError("peak anchors need the centre heatmap")
            return self.anchors(heatmap, size)
        return None if self.anchors is None else self.anchors(batch)

    def normalise(self, iam: torch.Tensor) -> torch.Tensor:
        """Raw maps [B, groups*N, H*W] -> each map sums to 1 (sigmoid or softmax)."""
        if self.kind == "giam_softmax":
            return F.softmax(iam + self.softmax_bias, dim=-1)
        if torch.is_grad_enabled() and iam.requires_grad:
            return SigmoidNormalise.apply(iam)
        prob = iam.sigmoid()
        return prob / prob.sum(-1, keepdim=True).clamp(min=1e-6)

    def forward(
        self, features: torch.Tensor, heatmap: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """[B, C, H, W] (+ centre heatmap logits [B, 1, h, w] for peak anchors) -> logits
        [B,N,K], kernels [B,N,D], objectness [B,N,1]; with the location prior also
        `pred_centres` [B,N,2] (x, y in cells) and `pred_spread` [B,N,1]; in training also the
        maps `pred_iam` [B,G,N,H,W] (a view) and, with anchors, `pred_anchors` [B,N,3] (x, y,
        log width; detached) for the losses and the matcher."""
        features = self.inst_convs(features)
        anchors = self.anchor_points(features.shape[0], features.shape[-2:], heatmap)
        maps = self.activation_maps(features, anchors)
        extra = {}
        if self.mask_spread is not None or self.anchors is not None:
            centres = activation_centres(maps, features.shape[-2:], self.groups, self.num_masks)
        inst = torch.bmm(maps, features.flatten(2).transpose(1, 2))  # [B, groups*N, C]
        if self.kind != "iam":
            b, n = inst.shape[0], self.num_masks
            # Instance i gathers map i of every group: [B,G,N,C] -> [B,N,G*C].
            inst = inst.reshape(b, self.groups, n, -1).transpose(1, 2).reshape(b, n, -1)
            inst = F.relu(self.fc(inst))
        if anchors is not None:
            h, w = features.shape[-2:]
            # In [0, 1]; x and y divided apart so that a traced graph keeps the size dynamic.
            unit_centres = torch.cat([(centres[..., :1] + 0.5) / w, (centres[..., 1:] + 0.5) / h],
                                     -1)
            inst = inst + self.offset_embed(anchor_offsets(unit_centres, *anchors)).to(inst.dtype)
        if self.training and anchors is not None:  # for the matcher
            points, log_width = anchors
            extra["pred_anchors"] = torch.cat([points, log_width[..., None]], -1).detach()
        if self.training:  # for the activation-map loss, when the recipe has one
            extra["pred_iam"] = maps.unflatten(1, (self.groups, self.num_masks))  # [B, G, N, h*w]
            extra["pred_iam"] = extra["pred_iam"].unflatten(3, features.shape[-2:])
        out = {
            "pred_logits": self.cls_score(inst),
            "pred_kernels": self.mask_kernel(inst),
            "pred_scores": self.objectness(inst),
            **extra,
        }
        if self.mask_spread is not None:
            out["pred_centres"] = centres
            out["pred_spread"] = F.softplus(self.mask_spread(inst))
        return out


class MaskOutputs(NamedTuple):
    """What the mask branch hands the decoder."""

    features: torch.Tensor  # mask features [B, D, h, w]
    centre: torch.Tensor | None  # centre heatmap logits [B, 1, h, w], with peak anchors


class MaskBranch(nn.Module):
    """Features -> mask embedding [B, kernel_dim, H, W].

    With `fine_channels`, the branch continues at stride 4: its stride-8 output is upsampled,
    added to a 1x1 projection of the backbone's stride-4 map and refined by one 3x3 conv, so
    masks of objects a few cells wide get a boundary of their own (a U-Net style skip).

    With `centre_heatmap`, a 1x1 head predicts object centres from the same features (CenterNet's
    heatmap, at the mask stride), on which peak anchors sit.
    """

    def __init__(
        self, *, in_channels: int, dim: int, num_convs: int, kernel_dim: int, fine_channels: int,
        centre_heatmap: bool = False,
    ):
        super().__init__()
        self.mask_convs = conv_stack(num_convs, in_channels, dim)
        self.fine_lateral: nn.Conv2d | None = None
        if fine_channels:
            self.fine_lateral = nn.Conv2d(fine_channels, dim, 1)
            c2_msra_fill(self.fine_lateral)
            self.fine_convs = conv_stack(1, dim, dim)
        self.projection = nn.Conv2d(dim, kernel_dim, 1)
        c2_msra_fill(self.projection)
        self.centre_head: nn.Conv2d | None = None
        if centre_heatmap:
            self.centre_head = nn.Conv2d(dim, 1, 1)
            nn.init.normal_(self.centre_head.weight, std=0.01)
            nn.init.constant_(self.centre_head.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, features: torch.Tensor, fine: torch.Tensor | None = None) -> MaskOutputs:
        """features [B, C, H/8, W/8] (+ fine [B, C4, H/4, W/4]) -> mask features [B, D, h, w]
        (h, w: H/8 or H/4) and, with `centre_heatmap`, centre logits [B, 1, h, w]."""
        x = self.mask_convs(features)
        if self.fine_lateral is not None:
            if fine is None:
                raise ValueError("this mask branch needs the backbone's stride-4 map")
            x = F.interpolate(x, size=fine.shape[-2:], mode="bilinear", align_corners=False)
            x = self.fine_convs(x + self.fine_lateral(fine))
        centre = None if self.centre_head is None else self.centre_head(x)
        return MaskOutputs(self.projection(x), centre)


class IAMDecoder(nn.Module):
    """Encoder map [B, C, H/8, W/8] -> raw SparseInst outputs (all logits)."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        kind: str,
        num_masks: int,
        groups: int,
        inst_dim: int,
        inst_convs: int,
        mask_dim: int,
        mask_convs: int,
        kernel_dim: int,
        scale_factor: float,
        fine_channels: int,
        centre_prior: bool,
        query_anchors: bool,
        peak_anchors: bool = False,
    ):
        super().__init__()
        self.scale_factor = scale_factor
        # Set by `share_first_convs` for inference only: both branches' first conv in one layer.
        self.first_convs: nn.Module | None = None
        self.inst_branch = InstanceBranch(
            in_channels=in_channels + 2,
            num_classes=num_classes,
            kind=kind,
            num_masks=num_masks,
            groups=groups,
            dim=inst_dim,
            num_convs=inst_convs,
            kernel_dim=kernel_dim,
            centre_prior=centre_prior,
            query_anchors=query_anchors,
            peak_anchors=peak_anchors,
        )
        self.mask_branch = MaskBranch(
            in_channels=in_channels + 2, dim=mask_dim, num_convs=mask_convs, kernel_dim=kernel_dim,
            fine_channels=fine_channels, centre_heatmap=peak_anchors,
        )

    def forward(
        self, features: torch.Tensor, fine: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """features [B, C, H/8, W/8] (+ the backbone's stride-4 map when the mask branch is
        fine) -> pred_logits [B,N,K], pred_scores [B,N,1], pred_masks [B,N,H/4,W/4]."""
        features = torch.cat([coordinate_features(features), features], dim=1)
        inst_input = mask_input = features
        if self.first_convs is not None:
            inst_input, mask_input = self.first_convs(features)
        mask = self.mask_branch(mask_input, fine)
        out = self.inst_branch(inst_input, mask.centre)
        mask_features = mask.features
        if mask.centre is not None and self.training:
            out["pred_centre_map"] = mask.centre.float()
        masks = torch.bmm(out.pop("pred_kernels"), mask_features.flatten(2))
        if "pred_centres" in out:
            # Centres are in stride-8 cells; stride-8 cell i lies at 2i + 0.5 in stride-4 cells.
            ratio = mask_features.shape[-1] / features.shape[-1]
            centres = out.pop("pred_centres") * ratio + (ratio - 1) / 2
            spread = out.pop("pred_spread") / ratio**2
            masks = subtract_centre_penalty(masks, centres, spread, mask_features.shape[-2:])
        else:
            masks = masks.unflatten(2, mask_features.shape[-2:])
        # In fp32 even under autocast: post-processing and the losses read fp32, and a CPU
        # resizes bf16 more slowly than fp32.
        masks = masks.float()
        if self.mask_branch.fine_lateral is None:  # a fine branch is at stride 4 already
            masks = F.interpolate(
                masks, scale_factor=self.scale_factor, mode="bilinear", align_corners=False
            )
        out["pred_masks"] = masks
        return out


class SplitOutput(nn.Module):
    """Runs `layers` and splits the output channels at `split`: (first part, second part)."""

    def __init__(self, layers: nn.Module, split: int):
        super().__init__()
        self.layers, self.split = layers, split

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.layers(x)
        return y[:, : self.split], y[:, self.split :]


@torch.no_grad()
def share_first_convs(decoder: IAMDecoder) -> bool:
    """Merge the first conv + ReLU of both branches, which read the same input, into one conv
    with both sets of filters (in place; inference only): one wider layer instead of two runs
    faster (Winograd transforms the input once). Returns whether it merged."""
    inst, mask = decoder.inst_branch.inst_convs, decoder.mask_branch.mask_convs
    if decoder.first_convs is not None or len(inst) < 2 or len(mask) < 2:
        return False
    a, b = inst[0], mask[0]
    if not (is_plain_3x3(a) and is_plain_3x3(b) and a.in_channels == b.in_channels):
        return False
    if not (type(inst[1]) is nn.ReLU and type(mask[1]) is nn.ReLU):
        return False
    if a.bias is None or b.bias is None:
        return False
    merged = nn.Conv2d(a.in_channels, a.out_channels + b.out_channels, 3, padding=1)
    merged.to(a.weight.device, a.weight.dtype)
    merged.weight.copy_(torch.cat([a.weight, b.weight]))
    merged.bias.copy_(torch.cat([a.bias, b.bias]))
    decoder.first_convs = SplitOutput(nn.Sequential(merged, nn.ReLU(inplace=True)), a.out_channels)
    inst[0] = inst[1] = mask[0] = mask[1] = nn.Identity()
    return True
