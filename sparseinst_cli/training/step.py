"""One optimisation step: `Stepper` owns the model, criterion, optimizer, lr and grad scaler.

A step moves a batch to the device, runs the model (under autocast), the criterion, and the
optimizer update. Whether the losses were finite, whether to stop and the iteration count of a
--time budget are all-reduced first, so all processes skip, stop or re-plan together.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import Config
from ..engine.distributed import DistContext, all_reduce_sum
from ..errors import UserError
from ..modeling.losses import SparseInstCriterion
from ..modeling.matcher import HungarianMatcher
from ..preprocess import pad_batch
from ..runtime import autocast_context, torch_dtype
from .optim import build_optimizer
from .schedule import LRController, schedule_of


def build_criterion(cfg: Config) -> SparseInstCriterion:
    loss = cfg.loss
    peaks = cfg.model.decoder.peak_anchors
    if loss.centre_weight > 0 and not peaks:
        raise UserError(
            "loss.centre_weight > 0 needs the centre heatmap: model.decoder.peak_anchors=true"
        )
    if peaks and loss.centre_weight <= 0:  # its peaks carry no gradient: only this loss trains it
        raise UserError("model.decoder.peak_anchors needs loss.centre_weight > 0 to train its "
                        "centre heatmap")
    return SparseInstCriterion(
        matcher=HungarianMatcher(
            alpha=loss.matcher_alpha, beta=loss.matcher_beta, anchor_power=loss.matcher_anchor
        ),
        num_classes=cfg.model.num_classes, class_weight=loss.class_weight,
        mask_bce_weight=loss.mask_bce_weight, dice_weight=loss.dice_weight,
        objectness_weight=loss.objectness_weight, iam_weight=loss.iam_weight,
        target_resize=loss.target_resize, centre_weight=loss.centre_weight,
        oriented_centres=cfg.model.decoder.object_shape == "elongated",
        focal_alpha=loss.focal_alpha, focal_gamma=loss.focal_gamma,
    )


def to_device_batch(
    images: list[torch.Tensor], targets: list[dict], pixel_mean: list[float], device: torch.device
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """uint8 images [3, h_i, w_i] -> padded float batch [B, 3, Hp, Wp]; target masks zero-padded
    to [M_i, Hp, Wp] as the criterion expects."""
    batch = pad_batch([im.float() for im in images], pixel_mean)
    hp, wp = batch.shape[-2:]
    out = []
    for t in targets:
        masks = t["masks"]
        padded = torch.zeros((masks.shape[0], hp, wp), dtype=torch.bool)
        padded[:, : masks.shape[1], : masks.shape[2]] = masks
        out.append({"labels": t["labels"].to(device), "masks": padded.to(device)})
    batch = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    return batch, out


class PhaseClock:
    """Seconds per phase of training steps, for `bench --train`: `mark(name)` closes the phase
    that began at the previous mark. On CUDA it waits for the queued work first, so the time
    lands in the phase that queued it (a real run never waits)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, list[float]] = {}
        self._last = time.perf_counter()

    def restart(self) -> None:
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds.setdefault(phase, []).append(now - self._last)
        self._last = now


@dataclass
class StepResult:
    losses: dict[str, float]
    lr: float
    finite: bool
    stop: bool
    budget_iters: int = 0  # >0: the --time budget fixed the iteration count


class Stepper:
    """Owns the model, criterion, optimizer, lr and scaler; runs one iteration at a time."""

    def __init__(self, model: nn.Module, cfg: Config, ctx: DistContext):
        self.cfg, self.ctx = cfg, ctx
        self.device = torch.device(ctx.device)
        # NHWC convolutions: faster on CPUs (oneDNN) and for AMP on GPUs.
        self.model = model.to(memory_format=torch.channels_last)
        self.criterion = build_criterion(cfg)
        self.optimizer = build_optimizer(model, cfg.solver)
        self.lr = LRController(schedule_of(cfg))
        self.amp = torch_dtype(cfg.solver.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.solver.amp == "fp16")
        self.ddp: nn.Module = model
        if ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(model, device_ids=ids)

    def step(
        self, iteration: int, images: list, targets: list, *, stop: bool, budget_iters: int = 0,
        clock: PhaseClock | None = None,
    ) -> StepResult:
        """One optimisation step; skipped (no update) when any process saw a non-finite loss.
        A `clock` records its phases: "data" (to the device), "forward" (with the loss) and
        "backward" (with the optimizer step)."""
        lr = self.lr.apply(self.optimizer, iteration)
        batch, targets = to_device_batch(images, targets, self.cfg.model.pixel_mean, self.device)
        if clock is not None:
            clock.mark("data")
        with autocast_context(self.device, self.amp):
            outputs = self.ddp(batch)
        # A non-finite value makes its tensor's sum non-finite: one pass, no mask per element.
        sums = torch.stack([v.detach().sum(dtype=torch.float32) for v in outputs.values()])
        finite_out = bool(sums.isfinite().all())
        bad = all_reduce_sum(torch.tensor([0.0 if finite_out else 1.0], device=self.device))
        if bad.item() > 0:
            losses = {"loss_cls": math.nan}
            total = None
        else:
            loss_dict = self.criterion(outputs, targets)
            total = sum(loss_dict.values())
            losses = {k: float(v.detach()) for k, v in loss_dict.items()}
        flags = self._agree(losses, total, stop, budget_iters)
        result = StepResult(
            losses=flags["losses"], lr=lr, finite=flags["finite"], stop=flags["stop"],
            budget_iters=flags["budget_iters"],
        )
        if clock is not None:
            clock.mark("forward")
        if result.finite:
            self._update(total)
        self.optimizer.zero_grad(set_to_none=True)
        if clock is not None:
            clock.mark("backward")
        return result

    def _agree(
        self, losses: dict[str, float], total: torch.Tensor | None, stop: bool, budget_iters: int
    ) -> dict[str, Any]:
        """All-reduce [non-finite, stop, budget, losses...]; averages the losses for display."""
        # The same keys on every process (the all-reduce needs one layout), from the config.
        keys = ["loss_cls", "loss_mask_bce", "loss_dice", "loss_objectness"]
        if self.criterion.iam_weight > 0:
            keys.append("loss_iam")
        if self.criterion.centre_weight > 0:
            keys.append("loss_centre")
        finite = total is not None and bool(torch.isfinite(total.detach()))
        values = [0.0 if finite else 1.0, float(stop), float(budget_iters)]
        values += [losses.get(k, 0.0) if finite else 0.0 for k in keys]
        reduced = all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=self.device))
        reduced = reduced.tolist()
        world = self.ctx.world_size
        ok = reduced[0] == 0
        mean = {k: v / world for k, v in zip(keys, reduced[3:])} if ok else losses
        if ok:
            mean["total_loss"] = sum(mean.values())
        return {"finite": ok, "stop": reduced[1] > 0, "budget_iters": int(reduced[2]),
                "losses": mean}

    def _update(self, total: torch.Tensor) -> None:
        self.scaler.scale(total).backward()
        clip = self.cfg.solver.clip_grad_norm
        if clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "lr": self.lr.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr.load_state_dict(state["lr"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
