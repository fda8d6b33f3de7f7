"""`run_training`: plan the run, start the processes, train, and return a summary.

One process: training runs here. `--gpus N`: N processes are spawned, each joins a process
group (NCCL on CUDA, gloo on CPU) and trains with DistributedDataParallel on its share of the
global batch. Under torchrun every process calls `run_training` itself; rank 0 plans and
sends the plan to the others.

    from sparseinst_cli.training.launch import TrainOptions, run_training
    summary = run_training(TrainOptions(config="demo", data="demo", time_minutes=5))
"""
from __future__ import annotations

from dataclasses import replace

import torch

from ..engine.distributed import (
    DistContext,
    broadcast_object,
    free_port,
    init_from_torchrun,
    init_group,
    shutdown,
    spawn,
    under_torchrun,
)
from ..errors import RunError, UserError
from ..runtime import available_cpus
from .callbacks import CallbacksFactory, TrainCallbacks, TrainSummary, no_callbacks
from .loop import TrainLoop
from .plan import TrainOptions, TrainPlan, pick_device, prepare_plan

__all__ = ["TrainOptions", "TrainPlan", "TrainSummary", "run_training", "train_worker"]


def run_training(
    options: TrainOptions, callbacks: CallbacksFactory = no_callbacks
) -> TrainSummary:
    """Train as `options` say; `callbacks()` is called in the process that reports (rank 0)."""
    if under_torchrun():
        return _run_under_torchrun(options, callbacks)
    cb = callbacks()
    plan = prepare_plan(options, cb.on_notice)
    if plan.world_size == 1:
        return train_worker(0, plan, None, callbacks, cb)
    if plan.device_type == "cpu":
        cb.on_notice(f"no GPU: training with {plan.world_size} CPU processes (gloo)")
    return spawn(train_worker, plan.world_size, (plan, f"tcp://127.0.0.1:{free_port()}", callbacks))


def train_worker(
    rank: int,
    plan: TrainPlan,
    init_method: str | None,
    callbacks: CallbacksFactory,
    cb: TrainCallbacks | None = None,
) -> TrainSummary:
    """One training process (rank `rank` of `plan.world_size`)."""
    ctx = DistContext(device=plan.device)
    _set_threads(plan)  # also alone: whatever an earlier caller in this process set
    if plan.world_size > 1:
        ctx = init_group(
            rank=rank, world_size=plan.world_size, local_rank=rank,
            device_type=plan.device_type, init_method=init_method,
        )
    try:
        if ctx.is_main and cb is None:
            cb = callbacks()
        return TrainLoop(plan, ctx, cb if ctx.is_main else None).run()
    finally:
        shutdown()


def _set_threads(plan: TrainPlan) -> None:
    """CPU processes share the cores this run may use (its affinity mask); each takes its part.
    The thread count picks oneDNN's kernels, and so the last bits of every result."""
    if plan.device_type == "cpu":
        torch.set_num_threads(max(1, available_cpus() // plan.world_size))


def _run_under_torchrun(options: TrainOptions, callbacks: CallbacksFactory) -> TrainSummary:
    """Every torchrun process: join the group, let rank 0 plan, train with that plan."""
    kind, _ = pick_device(options.device, 1)
    ctx = init_from_torchrun(kind)
    try:
        cb = callbacks() if ctx.is_main else None
        plan: TrainPlan | Exception | None = None
        if cb is not None:
            try:
                plan = prepare_plan(replace(options, gpus=ctx.world_size), cb.on_notice)
            except (UserError, RunError) as exc:
                plan = exc
        plan = broadcast_object(plan)
        if isinstance(plan, Exception):
            raise plan
        plan.device = ctx.device
        _set_threads(plan)
        return TrainLoop(plan, ctx, cb).run()
    finally:
        shutdown()
