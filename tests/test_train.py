"""Training end to end on a tiny model: run folder, resume, signals, NaN rollback, fine-tuning."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from train_support import SMALL_HEAD, Recorder, assert_same_weights, make_dataset, train, weights

from sparseinst_cli.engine import run_dir as files
from sparseinst_cli.errors import UserError
from sparseinst_cli.loading.checkpoint import read_checkpoint
from sparseinst_cli.modeling.losses import SparseInstCriterion

R50_SMALL = (
    "input.min_size_train=[64]", "input.max_size_train=128", "input.min_size_test=64",
    "input.max_size_test=128", "solver.batch_size=2", "solver.lr=1e-5", "solver.max_iter=1",
    "solver.checkpoint_period=0", "data.num_workers=0",
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def test_run_folder_has_every_artifact(data, tmp_path):
    rec = Recorder()
    summary = train(data, tmp_path, recorder=rec)
    run = tmp_path / "exp"
    assert summary.status == "finished" and summary.iteration == 6 and summary.run_dir == run
    for name in ("config.yaml", "last.pth", "best.pth", "metrics.jsonl", "metrics.png"):
        assert (run / name).is_file(), name
    best = read_checkpoint(run / "best.pth")
    assert best["category_ids"] == [2, 5, 9] and best["config"]["model"]["num_classes"] == 3
    assert any("num_classes 80 -> 3" in n for n in rec.notices)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["type"] for r in records} >= {"train", "eval"}
    assert rec.iterations == list(range(1, 7)) and rec.evals and "AP" in rec.evals[-1]
    assert train(data, tmp_path).run_dir == tmp_path / "exp2"


@pytest.mark.parametrize("head", [(), SMALL_HEAD], ids=["official", "small"])
def test_interrupted_then_resumed_equals_uninterrupted(data, tmp_path, head):
    full = train(data, tmp_path, name="full", overrides=("solver.eval_period=0", *head))
    part = train(data, tmp_path, name="part", stop_after=3, overrides=head)
    assert part.status == "interrupted" and part.iteration == 3
    resumed = train(data, tmp_path, name="part", resume=True, overrides=head)
    assert resumed.status == "finished" and resumed.iteration == 6
    assert_same_weights(weights(full.last), weights(resumed.last))


def test_sigterm_saves_and_stops_then_resume_matches(data, tmp_path):
    class Killer(Recorder):
        def on_iteration(self, iteration, max_iter, losses, lr):
            super().on_iteration(iteration, max_iter, losses, lr)
            if iteration == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    part = train(data, tmp_path, name="sig", recorder=Killer())
    assert part.status == "interrupted" and part.signal == "SIGTERM" and part.iteration == 3
    assert read_checkpoint(part.last)["iteration"] == 3
    resumed = train(data, tmp_path, name="sig", resume=True)
    full = train(data, tmp_path, name="full")
    assert_same_weights(weights(full.last), weights(resumed.last))


def test_nan_losses_are_skipped_then_rolled_back(data, tmp_path, monkeypatch):
    original = SparseInstCriterion.forward
    calls = {"n": 0}

    def flaky(self, outputs, targets):
        calls["n"] += 1
        losses = original(self, outputs, targets)
        if calls["n"] in (3, 4, 5):  # three in a row, right after the checkpoint of iteration 2
            losses["loss_dice"] = losses["loss_dice"] * float("nan")
        return losses

    monkeypatch.setattr(SparseInstCriterion, "forward", flaky)
    rec = Recorder()
    summary = train(data, tmp_path, recorder=rec, overrides=("solver.max_iter=8",))
    assert summary.status == "finished" and summary.iteration == 8
    assert sum("step skipped" in n for n in rec.notices) == 3
    rollback = [n for n in rec.notices if "rolled back" in n]
    assert rollback and "iteration 2" in rollback[0] and "x0.5" in rollback[0]
    state = read_checkpoint(summary.last)["train_state"]
    assert state["lr"]["scale"] == 0.5 and state["rollbacks"] == 1
    assert all(torch.isfinite(v).all() for v in weights(summary.last).values())
    assert rec.lrs[-1] == pytest.approx(1e-3 * 0.5 * 0.1)


def test_finetune_from_official_80_class_checkpoint(data, tmp_path, r50_giam_official):
    rec = Recorder()
    summary = train(
        data, tmp_path, recorder=rec, weights=str(r50_giam_official), config="r50_giam",
        base=R50_SMALL,
    )
    assert summary.status == "finished"
    (source, rows), = rec.skipped
    skipped = dict(rows)
    assert set(skipped) == {
        "decoder.inst_branch.cls_score.weight", "decoder.inst_branch.cls_score.bias"
    }
    assert "[80, 1024] in the checkpoint, [3, 1024] in the model" in skipped[
        "decoder.inst_branch.cls_score.weight"]
    ours = weights(summary.last)
    official = torch.load(r50_giam_official, weights_only=True)["model"]
    torch.testing.assert_close(  # loaded, then trained one step with a small lr
        ours["decoder.mask_branch.projection.weight"],
        official["decoder.mask_branch.projection.weight"], atol=1e-3, rtol=0,
    )
    assert read_checkpoint(summary.best)["category_ids"] == [2, 5, 9]


def test_user_mistakes_are_one_line_errors(data, tmp_path):
    with pytest.raises(UserError, match="split evenly"):
        train(data, tmp_path, gpus=2, batch=3)
    with pytest.raises(UserError, match="either --iters or --time"):
        train(data, tmp_path, iters=3, time_minutes=1.0)
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        train(data, tmp_path, amp="fp16")
    with pytest.raises(UserError, match="cannot resume"):
        train(data, tmp_path, name="nothing", resume=True)
    assert not (tmp_path / "exp").exists()


def test_time_budget_fixes_the_iteration_count(data, tmp_path):
    rec = Recorder()
    summary = train(data, tmp_path, recorder=rec, time_minutes=0.05,
                    overrides=("solver.checkpoint_period=0",))
    assert summary.status == "finished" and summary.max_iter == summary.iteration >= 2
    saved = files.CONFIG_FILE
    assert f"max_iter: {summary.max_iter}" in (summary.run_dir / saved).read_text()


def test_bf16_and_gradient_clipping_train(data, tmp_path):
    summary = train(data, tmp_path, amp="bf16", iters=2,
                    overrides=("solver.clip_grad_norm=1.0", "solver.checkpoint_period=0"))
    assert summary.status == "finished"
    assert read_checkpoint(summary.last)["config"]["solver"]["amp"] == "bf16"
    assert all(torch.isfinite(v).all() for v in weights(summary.last).values())


def test_amp_auto_picks_bf16_only_where_the_cpu_has_it(monkeypatch):
    from sparseinst_cli.training import plan

    monkeypatch.setattr(plan, "cpu_has_native_bf16", lambda: True)
    assert plan.check_amp("auto", "cpu") == "bf16"
    monkeypatch.setattr(plan, "cpu_has_native_bf16", lambda: False)
    assert plan.check_amp("auto", "cpu") == "none"
    assert plan.check_amp("fp16", "cuda") == "fp16"
    with pytest.raises(UserError, match="not one of"):
        plan.check_amp("fp8", "cpu")


def test_loader_workers_keep_the_cpu_value_and_grow_for_a_gpu(monkeypatch):
    """CPU training keeps the config's few workers (they take cores from the step); a GPU gets
    up to GPU_LOADER_WORKERS per process; --workers always wins, within the cores."""
    from sparseinst_cli.training import plan

    monkeypatch.setattr(plan, "available_cpus", lambda: 16)
    assert plan.loader_workers(None, 2, "cpu") == 2
    assert plan.loader_workers(None, 2, "cuda") == plan.GPU_LOADER_WORKERS == 8
    assert plan.loader_workers(None, 2, "cuda", processes=4) == 4
    assert plan.loader_workers(None, 12, "cuda") == 12
    assert plan.loader_workers(0, 2, "cuda") == 0
    assert plan.loader_workers(40, 2, "cpu") == 16
    monkeypatch.setattr(plan, "available_cpus", lambda: 2)
    assert plan.loader_workers(None, 2, "cuda") == 2
    with pytest.raises(UserError, match="0 or more"):
        plan.loader_workers(-1, 2, "cpu")


def test_training_evaluates_one_image_at_a_time(data, tmp_path, monkeypatch):
    """As `sparseinst eval` does: padding images of different sizes into one batch changes
    SparseInst's outputs, so training's AP (and best.pth) would differ from what users measure."""
    from sparseinst_cli.training import loop

    batches = []

    def spy(*args, batch_size: int = 1, **kwargs):
        batches.append(batch_size)
        return real(*args, batch_size=batch_size, **kwargs)

    real = loop.evaluate_split
    monkeypatch.setattr(loop, "evaluate_split", spy)
    train(data, tmp_path, overrides=("solver.batch_size=4",))
    assert batches and set(batches) == {1}
