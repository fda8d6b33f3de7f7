"""Learning-rate schedule in iterations (linear warm-up, then steps) and the `--time` budget.

The schedule is a pure function of the iteration; `LRController` writes it into the optimizer's
param groups (each keeps its own `base_lr`) and carries the extra factor that a rollback after
non-finite losses lowers. Both are saved in `last.pth` so `--resume` continues exactly.
`schedule_of` builds the schedule from the solver config.
"""
from __future__ import annotations

import bisect
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import Config


@dataclass(frozen=True)
class WarmupMultiStep:
    """detectron2's WarmupMultiStepLR: factor(i) = warm-up factor * gamma ** (steps passed).

    Warm-up is linear from `warmup_factor` at iteration 0 to 1 at `warmup_iters`.
    """

    max_iter: int
    steps: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_iters: int = 0
    warmup_factor: float = 0.001

    def factor(self, iteration: int) -> float:
        """Multiplier of the base learning rate at `iteration` (0-based)."""
        warm = 1.0
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            warm = self.warmup_factor * (1 - alpha) + alpha
        return warm * self.gamma ** bisect.bisect_right(self.steps, iteration)

    def fit_to(self, max_iter: int) -> WarmupMultiStep:
        """The same schedule laid over `max_iter` iterations: warm-up and steps keep their
        fractions of the run (a step or warm-up never shrinks below one iteration)."""
        max_iter = max(1, int(max_iter))
        ratio = max_iter / max(1, self.max_iter)
        steps = tuple(sorted({max(1, round(s * ratio)) for s in self.steps if s < self.max_iter}))
        warmup = max(1, round(self.warmup_iters * ratio)) if self.warmup_iters else 0
        return dataclasses.replace(
            self, max_iter=max_iter, steps=steps, warmup_iters=min(warmup, max_iter)
        )

    def describe(self) -> str:
        steps = ", ".join(str(s) for s in self.steps) or "none"
        return f"{self.max_iter} iterations, warm-up {self.warmup_iters}, lr steps at {steps}"


@dataclass
class LRController:
    """Sets `lr = base_lr * scale * schedule.factor(i)` in every param group.

    `scale` starts at 1 and halves at each rollback after non-finite losses.
    """

    schedule: WarmupMultiStep
    scale: float = 1.0

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int) -> float:
        """Set the lr of every group for `iteration`; returns the largest one (for display)."""
        factor = self.scale * self.schedule.factor(iteration)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        return max(group["lr"] for group in optimizer.param_groups)

    def state_dict(self) -> dict[str, Any]:
        return {"schedule": dataclasses.asdict(self.schedule), "scale": self.scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sched = dict(state["schedule"])
        sched["steps"] = tuple(sched["steps"])
        self.schedule = WarmupMultiStep(**sched)
        self.scale = float(state["scale"])


@dataclass
class TimeBudget:
    """Turns a wall-clock budget into an iteration count, measured on the first iterations.

    Iterations before `skip` (start-up, first allocations) are not timed. Measuring stops once
    `min_iters` iterations took at least `min(max_window, window_fraction * seconds)`; the
    result counts the iterations already done plus those that fit in the time left, at least
    one more: the caller runs the next iteration before it can act on the decision.
    """

    seconds: float
    skip: int = 2
    min_iters: int = 5
    # A tenth of the budget: multi-scale batches vary 2x in cost and each new input shape is
    # slow the first time, so a short window under-counted runs by up to a third.
    window_fraction: float = 0.1
    max_window: float = 120.0
    started: float = field(default_factory=time.monotonic)
    _mark: tuple[int, float] | None = None

    def observe(self, done: int, now: float | None = None) -> int | None:
        """Call after each iteration with the number done; returns the total once decided."""
        now = time.monotonic() if now is None else now
        if done < self.skip:
            return None
        if self._mark is None:
            self._mark = (done, now)
            return None
        first, t0 = self._mark
        timed = done - first
        window = min(self.max_window, self.window_fraction * self.seconds)
        if timed < self.min_iters or now - t0 < window:
            if now - self.started < self.seconds:
                return None
        per_iter = (now - t0) / max(timed, 1)
        left = max(0.0, self.seconds - (now - self.started))
        return done + max(1, int(left / per_iter))  # the iteration about to run counts too


def schedule_of(cfg: Config) -> WarmupMultiStep:
    s = cfg.solver
    return WarmupMultiStep(
        max_iter=s.max_iter, steps=tuple(s.steps), gamma=s.gamma, warmup_iters=s.warmup_iters,
        warmup_factor=s.warmup_factor,
    )
