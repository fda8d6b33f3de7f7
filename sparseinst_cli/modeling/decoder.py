"""IAM decoder: instance branch (IAM / G-IAM / G-IAM softmax) and mask branch.

The small-data head's additions (location prior, anchors, fused backward passes) live in
`small_head.py`; each is off unless the config turns it on.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .init import c2_msra_fill, c2_xavier_fill
from .small_head import (
    PEAK_WINDOW,
    PeakAnchors,
    SigmoidNormalise,
    SpreadHead,
    activation_centres,
    anchor_offsets,
    anchor_penalty,
    make_anchors,
    offset_embedding,
    subtract_centre_penalty,
    unit_centres,
)

DECODER_KINDS = ("iam", "giam", "giam_softmax")


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
        object_shape: str = "round",
        peak_window: int = PEAK_WINDOW,
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
        # The small-data head's additions (small_head.py), when the config asks for them.
        self.mask_spread = SpreadHead(head_dim, object_shape) if centre_prior else None
        self.anchors = make_anchors(num_masks, peak=peak_anchors, query=query_anchors,
                                    peak_window=peak_window)
        if self.anchors is not None:
            self.offset_embed = offset_embedding(head_dim)
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
        `pred_centres` [B,N,2] (x, y in cells) and `pred_spread` [B,N,1 or 3]; in training also the
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
            offsets = anchor_offsets(unit_centres(centres, features.shape[-2:]), *anchors)
            inst = inst + self.offset_embed(offsets).to(inst.dtype)
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
            out["pred_spread"] = self.mask_spread(inst)
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
        object_shape: str = "round",
        peak_window: int = PEAK_WINDOW,
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
            object_shape=object_shape,
            peak_window=peak_window,
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
