"""The gradients of one real training step, in one process or in several (gloo), for the DDP tests.

Weights after a few AdamW steps are no measure of DDP's correctness across CPUs: Adam divides by
the root of the second moment, so a last-bit difference in a gradient near zero (oneDNN picks
other kernels for half a batch, another thread count or another CPU) can move a weight by a good
part of the learning rate. The gradient of one step, taken where the optimizer would use it, is
what DDP has to get right, and its rounding noise has a bound.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from sparseinst_cli.engine.distributed import DistContext, init_group, shutdown
from sparseinst_cli.training.loop import TrainLoop
from sparseinst_cli.training.plan import TrainPlan

# A DDP error (a missing all-reduce, a loss divided by the wrong count) changes a gradient by
# the order of the gradient itself: 50-100% of its largest element (measured: 0.5 and more).
# fp32 rounding changes it in the last bits, amplified where a sum cancels (a bias gradient
# summed over every pixel): up to 2e-4 of its largest element, measured on a 2-core AMD EPYC.
# The bound lies between, about 50 times from each.
RELATIVE_TOLERANCE = 1e-2

BREAKAGES = ("none", "no_allreduce", "loss_normaliser")


class GradientCapture(torch.optim.SGD):
    """Stands in for the optimizer: `step` keeps a copy of every gradient and changes nothing."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        # the real optimizer's groups (the lr schedule reads their `base_lr`)
        super().__init__([{k: v for k, v in g.items() if k in ("params", "base_lr")}
                          for g in optimizer.param_groups], lr=0.0)
        self.names = {id(p): name for name, p in model.named_parameters()}
        self.grads: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ARG002 - the optimizer interface
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.grads[self.names[id(p)]] = p.grad.detach().clone().contiguous()


def first_step_gradients(
    rank: int, plan: TrainPlan, init_method: str | None, breakage: str = "none"
) -> dict[str, np.ndarray]:
    """Rank `rank` of `plan.world_size`: build the run as training does (same seeds, same
    loader shard), take its first batch through `Stepper.step` and return the gradients the
    optimizer would have received. `breakage` breaks DDP on purpose, to show the test fails."""
    torch.set_num_threads(1)
    ctx = DistContext(device="cpu")
    if plan.world_size > 1:
        ctx = init_group(rank=rank, world_size=plan.world_size, local_rank=rank,
                         device_type="cpu", init_method=init_method)
    try:
        loop = TrainLoop(plan, ctx, None)
        capture = GradientCapture(loop.model, loop.stepper.optimizer)
        loop.stepper.optimizer = capture
        images, targets = next(loop._data())
        if breakage == "loss_normaliser":  # each process divides by its own instance count
            dist.get_world_size = lambda *_a, **_k: 1  # this child process only
        if breakage == "no_allreduce":
            with loop.stepper.ddp.no_sync():
                loop.stepper.step(0, images, targets, stop=False)
        else:
            loop.stepper.step(0, images, targets, stop=False)
        # as numpy arrays: pickled by value (a tensor would be shared through a file
        # descriptor that dies with this process)
        return {name: grad.numpy() for name, grad in capture.grads.items()}
    finally:
        shutdown()


def gradient_mismatches(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> list[str]:
    """Parameters whose gradients differ by more than rounding explains: "name: error > bound"."""
    assert expected.keys() == got.keys(), set(expected) ^ set(got)
    bad = []
    for name, want in expected.items():
        bound = RELATIVE_TOLERANCE * float(np.abs(want).max()) + 1e-12
        error = float(np.abs(got[name] - want).max())
        if not error <= bound:
            bad.append(f"{name}: {error:.3g} > {bound:.3g}")
    return bad
