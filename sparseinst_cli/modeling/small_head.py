"""The small-data head's additions to the IAM decoder (`decoder.py`), each switched on by the
config (`model.decoder.centre_prior`, `query_anchors`, `peak_anchors`):

- a location prior: each instance's mask logits fall with the squared distance to the centre
  of its activation maps (`activation_centres`, `centre_penalty`);
- anchors that keep each activation map near a point: learned per query (`QueryAnchors`) or
  placed on the peaks of a predicted centre heatmap (`PeakAnchors`, `heatmap_peaks`);
- hand-written backward passes for training (`CentrePenalty`, `SigmoidNormalise`): the same
  values and gradients as the plain expressions, which inference and ONNX export keep using.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

# Initial inverse squared spread of the location prior, per stride-8 cell: a mask logit falls
# by 1 at 2.8 cells (22 px) from the instance's centre, before the kernels sharpen it.
INITIAL_SPREAD = 0.125
# Initial width of peak anchors, in stride-8 cells: about a small object's radius.
PEAK_WIDTH_CELLS = 1.5
# Subtracted from the centre logits of cells that are not local maxima: they rank after all.
NOT_A_PEAK = 1e4
# Side, in heatmap cells, of the square a peak must top: CenterNet's 3x3 by default; elongated
# objects get a wider one (`training/adapt.py`).
PEAK_WINDOW = 3


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
    """Location prior subtracted from the mask logits: a quadratic form of the offset from the
    instance's centre.

    centres: [B, N, 2] (x, y in cells of `size`); spread: [B, N, 1] (round: s * (dx^2 + dy^2),
    s >= 0) or [B, N, 3] (oriented: a dx^2 + c dy^2 + 2 b dx dy with a, c >= 0 and b^2 < ac, a
    prior long along the object's axis and short across it). Returns [B, N, H*W].
    It lets a linear mask kernel, which sees the same features at every object alike, keep its
    mask on its own object among many similar ones (what CondInst's relative coordinates do).
    """
    h, w = size
    dx = torch.arange(w, device=centres.device, dtype=centres.dtype) - centres[..., :1]
    dy = torch.arange(h, device=centres.device, dtype=centres.dtype) - centres[..., 1:]
    if spread.shape[-1] == 1:
        dist2 = dy.square()[..., :, None] + dx.square()[..., None, :]  # [B, N, H, W]
        return (spread[..., None] * dist2).flatten(2)
    a, c, b = (spread[..., i:i + 1, None] for i in range(3))
    penalty = c * dy.square()[..., :, None] + a * dx.square()[..., None, :]
    return (penalty + 2 * b * dy[..., :, None] * dx[..., None, :]).flatten(2)


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
    """masks - `centre_penalty`, fp32 [B, N, H, W], computed as broadcast subtractions. Its
    backward reads the gradient twice (its row and column sums give the centres' and spreads'
    gradients; an oriented prior's cross term one product more) where autograd's chain makes
    eight full passes over the stride-4 masks of every query (crowded stand-in, 120 queries:
    3-5% of a CPU training step)."""

    @staticmethod
    def forward(ctx, masks, centres, spread, size):
        h, w = size
        dtype = torch.promote_types(masks.dtype, torch.float32)  # fp32 (fp64 in gradcheck)
        xs = torch.arange(w, device=masks.device, dtype=dtype)
        ys = torch.arange(h, device=masks.device, dtype=dtype)
        spread = spread.to(dtype)
        a, c = (spread[..., :1], spread[..., 1:2]) if spread.shape[-1] == 3 else (spread, spread)
        dx = xs - centres[..., :1].to(dtype)  # [B, N, W]
        dy = ys - centres[..., 1:].to(dtype)  # [B, N, H]
        out = masks.unflatten(2, size) - (c * dy.square())[..., None]
        out.sub_((a * dx.square())[..., None, :])
        if spread.shape[-1] == 3:
            out.sub_((2 * spread[..., 2:] * dy)[..., :, None] * dx[..., None, :])
        ctx.save_for_backward(dx, dy, spread)
        ctx.dtypes = (centres.dtype, spread.dtype)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        dx, dy, spread = ctx.saved_tensors
        oriented = spread.shape[-1] == 3
        rows, cols = grad.sum(-1), grad.sum(-2)  # [B, N, H], [B, N, W]
        grad_masks = grad.flatten(2) if ctx.needs_input_grad[0] else None
        grad_centres = grad_spread = None
        col_moment, row_moment = (cols * dx).sum(-1), (rows * dy).sum(-1)  # [B, N]
        if oriented:  # sum of grad * dx * dy, for the cross term
            cross = (torch.linalg.vecdot(grad, dx[..., None, :]) * dy).sum(-1)
        if ctx.needs_input_grad[1]:  # d/dcx = 2 (a dx + b dy), d/dcy = 2 (c dy + b dx)
            if oriented:
                a, c, b = spread.unbind(-1)
                moments = torch.stack([a * col_moment + b * row_moment,
                                       c * row_moment + b * col_moment], -1)
                grad_centres = (2 * moments).to(ctx.dtypes[0])
            else:
                moments = torch.stack([col_moment, row_moment], -1)
                grad_centres = (2 * spread * moments).to(ctx.dtypes[0])
        if ctx.needs_input_grad[2]:
            x2, y2 = (cols * dx.square()).sum(-1), (rows * dy.square()).sum(-1)
            if oriented:
                grad_spread = -torch.stack([x2, y2, 2 * cross], -1)
            else:
                grad_spread = -(x2 + y2)[..., None]
            grad_spread = grad_spread.to(ctx.dtypes[1])
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
def heatmap_peaks(logits: torch.Tensor, count: int, window: int = PEAK_WINDOW) -> torch.Tensor:
    """The `count` highest local maxima (highest in their `window` x `window` square) of centre
    heatmaps as anchor points, in raster order.

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
    is_peak = logits == F.max_pool2d(logits, window, stride=1, padding=window // 2)
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
    The anchor width is one learned value, in cells of the instance features. `window`: see
    `heatmap_peaks`.
    """

    no_weight_decay = True

    def __init__(self, count: int, width_cells: float = PEAK_WIDTH_CELLS,
                 window: int = PEAK_WINDOW):
        super().__init__()
        self.count = count
        self.window = window
        self.log_width = nn.Parameter(torch.tensor(math.log(width_cells)))

    def forward(
        self, heatmap: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre heatmap logits [B, 1, h', w'] -> points [B, N, 2] in [0, 1] and log widths
        [B, N] in the unit of the points (the width in cells over the mean side of `size`)."""
        points = heatmap_peaks(heatmap, self.count, self.window)
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


OBJECT_SHAPES = ("round", "elongated")


class SpreadHead(nn.Linear):
    """Location prior: each instance's inverse squared spread from its features [B, N, D].

    round objects: [B, N, 1], one rate for every direction. elongated: [B, N, 3] = (a, c, b) of the
    quadratic form a dx^2 + c dy^2 + 2 b dx dy, positive semi-definite by construction
    (b = tanh(.) sqrt(ac)), so that a long object's prior can be long: it starts round. Both
    start at `INITIAL_SPREAD`. A linear layer itself, so its weights keep their checkpoint keys.
    """

    def __init__(self, head_dim: int, shape: str = "round"):
        if shape not in OBJECT_SHAPES:
            raise UserError(f"model.decoder.object_shape must be one of "
                            f"{', '.join(OBJECT_SHAPES)}, got {shape!r}")
        self.oriented = shape == "elongated"
        super().__init__(head_dim, 3 if self.oriented else 1)
        nn.init.normal_(self.weight, std=0.01)
        with torch.no_grad():
            self.bias.fill_(math.log(math.expm1(INITIAL_SPREAD)))
            self.bias[2:] = 0.0  # oriented: no cross term at first

    def forward(self, inst: torch.Tensor) -> torch.Tensor:
        raw = super().forward(inst)
        if not self.oriented:
            return F.softplus(raw)
        a, c = F.softplus(raw[..., :1]), F.softplus(raw[..., 1:2])
        b = torch.tanh(raw[..., 2:]) * (a * c).sqrt()
        return torch.cat([a, c, b], -1)


def make_anchors(
    count: int, *, peak: bool, query: bool, peak_window: int = PEAK_WINDOW
) -> PeakAnchors | QueryAnchors | None:
    """Peak anchors, else learned query anchors, else none."""
    if peak:
        return PeakAnchors(count, window=peak_window)
    if query:
        return QueryAnchors(count)
    return None


def offset_embedding(head_dim: int) -> nn.Linear:
    """(dx, dy, dx^2 + dy^2) of a map's centre from its anchor -> a feature added to the instance
    [B, N, head_dim], starting at zero. Where its object lies from its anchor lets an instance
    tell whether the object is its own or a neighbour's, which one-to-one matching asks it to
    learn."""
    embed = nn.Linear(3, head_dim)
    nn.init.zeros_(embed.weight)
    nn.init.zeros_(embed.bias)
    return embed


def unit_centres(centres: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centres [B, N, 2] in cells of `size` -> in [0, 1] of the map; x and y divided apart so
    that a traced graph keeps the size dynamic."""
    h, w = size
    return torch.cat([(centres[..., :1] + 0.5) / w, (centres[..., 1:] + 0.5) / h], -1)
