"""Warm-up + step schedule, its fit to another length, the --time budget and the lr writer."""
from __future__ import annotations

import pytest
import torch

from sparseinst_cli.training.schedule import LRController, TimeBudget, WarmupMultiStep

OFFICIAL = WarmupMultiStep(max_iter=270000, steps=(210000, 250000), gamma=0.1,
                           warmup_iters=1000, warmup_factor=0.001)


def test_warmup_is_linear_then_steps_multiply_by_gamma():
    assert OFFICIAL.factor(0) == pytest.approx(0.001)
    assert OFFICIAL.factor(500) == pytest.approx(0.001 * 0.5 + 0.5)
    assert OFFICIAL.factor(1000) == 1.0
    assert OFFICIAL.factor(209999) == 1.0
    assert OFFICIAL.factor(210000) == pytest.approx(0.1)
    assert OFFICIAL.factor(250000) == pytest.approx(0.01)


def test_fit_keeps_fractions():
    fitted = OFFICIAL.fit_to(2700)
    assert fitted.max_iter == 2700 and fitted.steps == (2100, 2500)
    assert fitted.warmup_iters == 10 and fitted.gamma == 0.1
    tiny = OFFICIAL.fit_to(3)
    assert tiny.warmup_iters == 1 and all(1 <= s <= 3 for s in tiny.steps)


def test_time_budget_counts_iterations_that_fit():
    budget = TimeBudget(seconds=100.0, skip=2, min_iters=5, max_window=10.0, started=0.0)
    clock = {1: 5.0, 2: 8.0}  # slow start-up, then 2 s per iteration
    clock.update({i: 8.0 + 2.0 * (i - 2) for i in range(3, 20)})
    decided = [budget.observe(i, now=clock[i]) for i in range(1, 10)]
    total = next(d for d in decided if d is not None)
    done = decided.index(total) + 1  # 7: 5 timed iterations and 10 s of measuring
    assert done == 7 and total == 7 + int((100 - clock[7]) / 2.0)


def test_time_budget_spent_while_measuring_ends_now():
    budget = TimeBudget(seconds=10.0, skip=2, min_iters=50, started=0.0)
    assert budget.observe(2, now=1.0) is None and budget.observe(3, now=5.0) is None
    assert budget.observe(4, now=11.0) == 5  # the iteration about to run


def test_controller_writes_each_group_and_keeps_the_rollback_scale():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.AdamW([{"params": [params[0]], "lr": 1.0, "base_lr": 1.0},
                             {"params": [params[1]], "lr": 0.1, "base_lr": 0.1}])
    ctl = LRController(WarmupMultiStep(max_iter=10, steps=(5,), warmup_iters=0))
    ctl.scale = 0.5
    assert ctl.apply(opt, 6) == pytest.approx(0.05)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.005])
    restored = LRController(WarmupMultiStep(max_iter=1))
    restored.load_state_dict(ctl.state_dict())
    assert restored.schedule == ctl.schedule and restored.scale == 0.5
