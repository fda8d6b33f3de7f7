"""One process's training run: build, resume, iterate, checkpoint, roll back, evaluate, finish.

Owns the loop (`TrainLoop`) and its state between iterations (`LoopState`, saved in last.pth):
the non-finite-loss and rollback limits, the --time budget decision and the training data.
Each iteration is one `step.Stepper.step`.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config, config_from_dict, save_config
from ..data.coco import CocoInstances, CocoTrainDataset
from ..data.loader import build_train_loader
from ..data.transforms import TransformConfig
from ..engine import run_dir as files
from ..engine.distributed import DistContext, barrier, gather_objects
from ..engine.evaluate import evaluate_split
from ..errors import RunError
from ..loading import LoadedModel
from ..modeling import build_model
from ..predictor import Predictor
from ..runtime import keep_freed_memory
from .callbacks import RunInfo, TrainCallbacks, TrainSummary
from .metrics import MetricsLog, WindowAverages, plot_metrics
from .plan import TrainPlan
from .schedule import TimeBudget
from .signals import StopSignals, signals_ignored
from .state import (
    TRAIN_STATE,
    Labels,
    capture_rng,
    read_train_state,
    restore_rng,
    save_train_state,
    save_weights,
)
from .step import Stepper
from .weights import load_backbone_weights, load_finetune_weights, skipped_rows

LOG_PERIOD = 20
NONFINITE_LIMIT = 3  # non-finite losses in a row before a rollback
MAX_ROLLBACKS = 5


@dataclass
class LoopState:
    """Counters the loop carries between iterations (and into last.pth)."""

    iteration: int = 0
    nonfinite: int = 0
    rollbacks: int = 0
    best_ap: float | None = None
    budget_left: float | None = None  # seconds, while a --time budget is not measured yet


class TrainLoop:
    """Training in one process of `ctx.world_size`; `callbacks` only on rank 0."""

    def __init__(self, plan: TrainPlan, ctx: DistContext, callbacks: TrainCallbacks | None):
        self.plan, self.ctx = plan, ctx
        self.cb = callbacks or TrainCallbacks()
        self.cfg: Config = config_from_dict(plan.config)
        self.run_dir = Path(plan.run_dir)
        self.labels = Labels(list(plan.class_names), list(plan.category_ids))
        self.log = MetricsLog(self.run_dir / files.METRICS)
        self._budget: TimeBudget | None = None  # a --time budget while it is being measured
        self._start = time.monotonic()
        if ctx.device == "cpu":
            keep_freed_memory()  # activations are reused, not faulted in again every step
        torch.manual_seed(self.cfg.seed)  # the same initial weights in every process
        model = build_model(self.cfg.model).to(ctx.device)
        if not plan.resume:
            self._load_start_weights(model)
        self.stepper = Stepper(model, self.cfg, ctx)
        self.state = LoopState(budget_left=plan.time_seconds)
        if plan.resume:
            self._restore(self.run_dir / files.LAST, notice=True)
        else:
            torch.manual_seed(self.cfg.seed + ctx.rank)
            self._save_last()  # the first "last good" state a rollback can return to
        self.source = CocoInstances(
            annotations=plan.train_split.annotations, images=plan.train_split.images,
            filter_empty=self.cfg.data.filter_empty, names=plan.train_split.names,
        )

    @property
    def model(self) -> torch.nn.Module:
        return self.stepper.model

    @property
    def max_iter(self) -> int | None:
        """None while a --time budget is still being measured."""
        return None if self.state.budget_left is not None else self.cfg.solver.max_iter

    # ----------------------------------------------------------------- weights and state

    def _load_start_weights(self, model: torch.nn.Module) -> None:
        backbone = self.plan.backbone_weights  # resolved by the plan (file, tag or config)
        if backbone:
            report = load_backbone_weights(model.backbone.body, backbone)
            if self.ctx.is_main and not report.clean:
                self.cb.on_skipped_weights(str(backbone), skipped_rows(report))
        if self.plan.weights:
            layout = self.cfg.model.checkpoint_layout
            report = load_finetune_weights(model, self.plan.weights, layout=layout)
            if self.ctx.is_main and not report.clean:
                self.cb.on_skipped_weights(str(self.plan.weights), skipped_rows(report))

    def _train_state(self) -> dict[str, Any]:
        state = dataclasses.asdict(self.state)
        if state["budget_left"] is not None and self._budget is not None:
            state["budget_left"] = max(0.0, self._budget.seconds - self._elapsed())
        return {
            **state, **self.stepper.state_dict(), "world_size": self.ctx.world_size,
            "rng": gather_objects(capture_rng()),
        }

    def _save_last(self) -> None:
        """All processes call this (RNG states are gathered); rank 0 writes last.pth."""
        train_state = self._train_state()
        if self.ctx.is_main:
            save_train_state(
                self.run_dir / files.LAST, model=self.model, cfg=self.cfg, labels=self.labels,
                train_state=train_state,
            )
        barrier()

    def _restore(self, path: Path, *, notice: bool) -> None:
        ckpt = read_train_state(path)
        train = ckpt[TRAIN_STATE]
        self.model.load_state_dict(ckpt["model"])
        self.stepper.load_state_dict(train)
        fields = {f.name for f in dataclasses.fields(LoopState)}
        self.state = LoopState(**{k: v for k, v in train.items() if k in fields})
        rngs = train["rng"]
        if len(rngs) == self.ctx.world_size:
            restore_rng(rngs[self.ctx.rank])
        elif self.ctx.is_main and notice:
            self.cb.on_notice(
                f"resuming with {self.ctx.world_size} processes instead of {len(rngs)}: the data "
                "order is kept, the random number streams restart"
            )
        if self.ctx.is_main:
            self.log.truncate_after(self.state.iteration)
            if notice:
                self.cb.on_notice(f"resumed {path} at iteration {self.state.iteration}")

    # ----------------------------------------------------------------- the loop

    def run(self) -> TrainSummary:
        self._start = time.monotonic()
        if self.state.budget_left is not None:
            self._budget = TimeBudget(self.state.budget_left, started=self._start)
        if self.ctx.is_main:
            self.cb.on_start(self._info())
            if self.max_iter is not None:
                self.cb.on_schedule(self.max_iter, self.stepper.lr.schedule.describe())
        with StopSignals() as signals:
            status = self._iterate(signals)
        return self._finish(status, signals.requested)

    def _elapsed(self) -> float:
        return time.monotonic() - self._start

    def _iterate(self, signals: StopSignals) -> str:
        averages = WindowAverages()
        data = self._data()
        window: list[dict[str, float]] = []
        while self.max_iter is None or self.state.iteration < self.max_iter:
            images, targets = next(data)
            stop = signals.requested is not None or self._stop_after(self.state.iteration + 1)
            budget = budget_decision(self._budget, self.ctx, self.state.iteration)
            result = self.stepper.step(
                self.state.iteration, images, targets, stop=stop, budget_iters=budget
            )
            self.state.iteration += 1
            if result.budget_iters:
                self._fix_budget(result.budget_iters)
            if not result.finite:
                if self._nonfinite(result.losses):
                    data = self._data()
                    window.clear()
                continue
            self.state.nonfinite = 0
            averages.update(result.losses)
            window.append({**result.losses, "lr": result.lr})
            self._after_step(window, averages, result.lr)
            if result.stop:
                self._save_last()
                return "interrupted"
        return "finished"

    def _after_step(self, window: list[dict[str, float]], averages: WindowAverages,
                    lr: float) -> None:
        it = self.state.iteration
        if self.ctx.is_main:
            self.cb.on_iteration(it, self.max_iter, averages.medians(), lr)
            if it % LOG_PERIOD == 0 or it == self.max_iter:
                mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                self.log.write("train", it, time=round(self._elapsed(), 2), **mean)
                window.clear()
        period = self.cfg.solver.eval_period
        if period and it % period == 0 and it != self.max_iter and self.plan.val_split:
            self._evaluate()
        if self.cfg.solver.checkpoint_period and it % self.cfg.solver.checkpoint_period == 0:
            self._save_last()

    def _stop_after(self, iteration: int) -> bool:
        return self.plan.stop_after is not None and iteration >= self.plan.stop_after

    def _data(self):
        """The batch iterator from the current iteration on (its workers ignore Ctrl-C)."""
        loader = build_train_data(
            self.cfg, self.source, self.ctx, workers=self.plan.workers,
            start_iter=self.state.iteration,
        )
        with signals_ignored():
            return iter(loader)

    def _fix_budget(self, total: int) -> None:
        """The --time measurement is done: lay the schedule over `total` iterations."""
        schedule = self.stepper.lr.schedule.fit_to(total)
        self.stepper.lr.schedule = schedule
        solver = self.cfg.solver
        solver.max_iter, solver.steps = schedule.max_iter, list(schedule.steps)
        solver.warmup_iters = schedule.warmup_iters
        self.state.budget_left, self._budget = None, None
        if self.ctx.is_main:
            save_config(self.cfg, self.run_dir / files.CONFIG_FILE)
            self.cb.on_schedule(total, f"time budget: {schedule.describe()}")

    def _nonfinite(self, losses: dict[str, float]) -> bool:
        """Count a skipped step; after NONFINITE_LIMIT in a row roll back. True if rolled back."""
        self.state.nonfinite += 1
        it = self.state.iteration
        if self.ctx.is_main:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
            self.cb.on_notice(f"non-finite loss at iteration {it} ({shown}): step skipped")
            self.log.write("event", it, event="nonfinite", **losses)
        if self.state.nonfinite < NONFINITE_LIMIT:
            return False
        keep = (self.stepper.lr.schedule, self.stepper.lr.scale * 0.5, self.state.budget_left)
        rollbacks, best_ap = self.state.rollbacks + 1, self.state.best_ap
        self._restore(self.run_dir / files.LAST, notice=False)
        self.stepper.lr.schedule, self.stepper.lr.scale, self.state.budget_left = keep
        self.state.rollbacks, self.state.best_ap = rollbacks, best_ap
        scale = self.stepper.lr.scale
        check_rollbacks(self.state)
        if self.ctx.is_main:
            self.cb.on_notice(
                f"{NONFINITE_LIMIT} non-finite losses in a row at iteration {it}: rolled back to "
                f"iteration {self.state.iteration} (last.pth) with the learning rate x{scale:g}"
            )
            self.log.write("event", self.state.iteration, event="rollback", lr_scale=scale,
                           from_iter=it)
        return True

    # ----------------------------------------------------------------- evaluation and the end

    def _evaluate(self) -> dict[str, Any]:
        it = self.state.iteration
        loaded = LoadedModel(self.model, self.cfg, self.labels.class_names,
                             self.labels.category_ids)
        predictor = Predictor(None, loaded=loaded, device=self.ctx.device)
        if self.ctx.is_main:
            self.cb.on_eval_start(it, self.plan.val_images or 0)
        out = evaluate_split(
            predictor, self.plan.val_split, batch_size=max(1, self.plan.eval_batch),
            progress=self.cb.on_eval_progress if self.ctx.is_main else None,
            rank=self.ctx.rank, world_size=self.ctx.world_size,
        )
        self.model.train()
        if not self.ctx.is_main:
            return {}
        metrics = {k: v for k, v in out.items() if k not in ("results",)}
        best = metrics.get("AP") is not None and (
            self.state.best_ap is None or metrics["AP"] > self.state.best_ap
        )
        if best:
            self.state.best_ap = metrics["AP"]
            save_weights(self.run_dir / files.BEST, model=self.model, cfg=self.cfg,
                         labels=self.labels, extra={"iteration": it, "metrics": metrics})
        self.log.write("eval", it, **{k: v for k, v in metrics.items() if k != "per_class"})
        plot_metrics(self.log.read(), self.run_dir / files.PLOT)
        self.cb.on_eval(it, metrics, best)
        return metrics

    def _finish(self, status: str, signal_name: str | None) -> TrainSummary:
        metrics: dict[str, Any] = {}
        if status == "finished":
            if self.plan.val_split:
                metrics = self._evaluate()
            elif self.ctx.is_main:
                save_weights(self.run_dir / files.BEST, model=self.model, cfg=self.cfg,
                             labels=self.labels, extra={"iteration": self.state.iteration})
            self._save_last()
        summary = TrainSummary(
            run_dir=self.run_dir, status=status, iteration=self.state.iteration,
            max_iter=self.max_iter or self.state.iteration, metrics=metrics,
            best_ap=self.state.best_ap, last=self.run_dir / files.LAST,
            best=(self.run_dir / files.BEST) if (self.run_dir / files.BEST).is_file() else None,
            signal=signal_name,
        )
        if self.ctx.is_main:
            plot_metrics(self.log.read(), self.run_dir / files.PLOT)
            self.cb.on_end(summary)
        return summary

    def _info(self) -> RunInfo:
        return RunInfo(
            run_dir=self.run_dir, start_iter=self.state.iteration, max_iter=self.max_iter,
            world_size=self.ctx.world_size, device=self.ctx.device,
            batch_size=self.cfg.solver.batch_size, num_classes=self.cfg.model.num_classes,
            train_images=len(self.source), val_images=self.plan.val_images, amp=self.cfg.solver.amp,
        )


def transform_of(cfg: Config) -> TransformConfig:
    i = cfg.input
    return TransformConfig(
        min_sizes=tuple(i.min_size_train), max_size=i.max_size_train, flip_prob=i.flip_prob,
        crop_enabled=i.crop_enabled, crop_size=tuple(i.crop_size), crop_prob=i.crop_prob,
        crop_resize_sizes=tuple(i.crop_resize_sizes), window=i.train_window,
    )


def build_train_data(cfg: Config, source: CocoInstances, ctx: DistContext, *, workers: int,
                     start_iter: int):
    """This process's endless loader of (images, targets), starting at `start_iter`."""
    dataset = CocoTrainDataset(source, transform=transform_of(cfg), seed=cfg.seed)
    return build_train_loader(
        dataset, batch_size=cfg.solver.batch_size // ctx.world_size, num_workers=workers,
        seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size, start_iter=start_iter,
        pin_memory=ctx.device.startswith("cuda"),
    )


def budget_decision(budget: TimeBudget | None, ctx: DistContext, iteration: int) -> int:
    """Rank 0's iteration count once its --time measurement is done, else 0."""
    if budget is None or not ctx.is_main:
        return 0
    return budget.observe(iteration) or 0


def check_rollbacks(state: LoopState) -> None:
    if state.rollbacks >= MAX_ROLLBACKS:
        raise RunError(
            f"training diverged: still non-finite losses after {MAX_ROLLBACKS} rollbacks; "
            "lower solver.lr or set solver.clip_grad_norm (e.g. 1.0)"
        )
