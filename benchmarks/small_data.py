"""Mask AP against training time: train a config on a dataset for a fixed number of minutes
and print the val mask AP at a few points in time (optionally beside a classical baseline).

    python benchmarks/small_data.py --config demo --data crowded --minutes 15
    python benchmarks/small_data.py --config demo --data crowded --minutes 15 --points 5 \\
        --watershed --set model.decoder.num_masks=100 --set input.min_size_test=352

Training runs through the Python API (`run_training` with a --time budget, so the learning-rate
schedule is laid over the whole budget as `sparseinst train --time` does). Every few iterations
the loop writes last.pth; a callback copies it once per time mark (every minutes/points), and
those copies are evaluated after training, so evaluating costs no training time. The last row
is the model at the end of the budget, evaluated by training itself. Minutes count training
only: from the first iteration, without model building and data indexing. `--watershed` adds
the Otsu + distance-transform watershed baseline (benchmarks/watershed_baseline.py), scored by
the same COCO evaluation. The table is also written to RUN_DIR/small_data.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):  # run from a checkout without installing
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from sparseinst_cli.data.coco import load_coco_json  # noqa: E402
from sparseinst_cli.data.datasets import resolve_split  # noqa: E402
from sparseinst_cli.engine.eval_jobs import EvalJob, run_eval  # noqa: E402
from sparseinst_cli.evaluation import evaluate_segm  # noqa: E402
from sparseinst_cli.training.callbacks import RunInfo, TrainCallbacks, TrainSummary  # noqa: E402
from sparseinst_cli.training.launch import TrainOptions, run_training  # noqa: E402
from sparseinst_cli.training.plan import pick_device  # noqa: E402

COLUMNS = ("AP", "AP50", "AP75", "APs")


class Snapshots(TrainCallbacks):
    """Copies last.pth into RUN_DIR/snapshots once per `every_s` seconds of training.

    The loop calls on_iteration(i) before it may save iteration i, so at on_iteration(i) the
    file holds iteration i - 1 when that one was a multiple of the checkpoint period.
    """

    def __init__(self, *, every_s: float, period: int) -> None:
        self.every_s, self.period = every_s, period
        self.next_mark = every_s
        self.times: dict[int, float] = {}
        self.taken: list[tuple[int, float, Path]] = []  # (iteration, training seconds, file)
        self.run_dir: Path | None = None
        self.t0 = 0.0

    def on_notice(self, message: str) -> None:
        print(f"note: {message}", flush=True)

    def on_start(self, info: RunInfo) -> None:
        self.run_dir, self.t0 = info.run_dir, time.monotonic()
        print(f"training in {info.run_dir}: {info.train_images} train / {info.val_images} val "
              f"images, batch {info.batch_size}, {info.device}, amp {info.amp}", flush=True)

    def on_schedule(self, max_iter: int, description: str) -> None:
        print(f"{max_iter} iterations ({description})", flush=True)

    def on_iteration(self, iteration: int, max_iter: int | None, losses: dict[str, float],
                     lr: float) -> None:
        self.times[iteration] = time.monotonic() - self.t0
        saved = iteration - 1
        if saved <= 0 or saved % self.period or self.times[saved] < self.next_mark:
            return
        snap = self.run_dir / "snapshots" / f"iter_{saved:06d}.pth"
        snap.parent.mkdir(exist_ok=True)
        shutil.copyfile(self.run_dir / "last.pth", snap)
        self.taken.append((saved, self.times[saved], snap))
        while self.next_mark <= self.times[saved]:
            self.next_mark += self.every_s
        loss = sum(losses.values())
        print(f"  {self.times[saved] / 60:5.1f} min  iteration {saved}  loss {loss:.3f}",
              flush=True)


def evaluate_snapshots(snapshots: Snapshots, data: str, device: str) -> list[dict]:
    """A table row per snapshot: minutes, iteration and the mask AP columns."""
    split = resolve_split(data, "val")
    rows = []
    for iteration, seconds, path in snapshots.taken:
        outcome = run_eval(EvalJob(weights=path, config=None, split=split, device=device))
        rows.append({"model": "train", "minutes": seconds / 60, "iteration": iteration,
                     **{k: outcome.metrics.get(k) for k in COLUMNS}})
    return rows


def watershed_row(data: str) -> dict:
    from watershed_baseline import split_results

    split = resolve_split(data, "val")
    metrics = evaluate_segm(load_coco_json(split.annotations), split_results(split))
    return {"model": "watershed", "minutes": None, "iteration": None,
            **{k: metrics.get(k) for k in COLUMNS}}


def render(rows: list[dict], title: str) -> str:
    def cell(v, fmt: str) -> str:
        return f"{'-':>{int(fmt.split('.')[0].rstrip('d'))}}" if v is None else format(v, fmt)

    lines = [title, f"{'model':<10} {'minutes':>7} {'iter':>6} "
             + " ".join(f"{k:>6}" for k in COLUMNS)]
    for r in rows:
        lines.append(f"{r['model']:<10} {cell(r['minutes'], '7.1f')} {cell(r['iteration'], '6d')} "
                     + " ".join(cell(r[k], '6.1f') for k in COLUMNS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--data", default="crowded", help="DATA.yaml or built-in name")
    parser.add_argument("--minutes", type=float, default=15.0, help="training time budget")
    parser.add_argument("--points", type=int, default=3,
                        help="evaluations before the end, evenly spaced in time")
    parser.add_argument("--checkpoint-period", type=int, default=10,
                        help="iterations between saves of last.pth (the snapshot resolution)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override, repeatable")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--project", default="runs/small_data")
    parser.add_argument("--watershed", action="store_true", help="add the watershed baseline")
    args = parser.parse_args(argv)

    snapshots = Snapshots(every_s=args.minutes * 60 / (args.points + 1),
                          period=args.checkpoint_period)
    options = TrainOptions(
        config=args.config, data=args.data, time_minutes=args.minutes, project=args.project,
        overrides=[*args.overrides, f"solver.checkpoint_period={args.checkpoint_period}",
                   "solver.eval_period=0"],
        device=args.device,
    )
    summary: TrainSummary = run_training(options, lambda: snapshots)
    rows = evaluate_snapshots(snapshots, args.data, pick_device(args.device, 1)[1])
    if summary.status == "finished" and summary.metrics:
        rows.append({"model": "train", "minutes": snapshots.times[summary.iteration] / 60,
                     "iteration": summary.iteration,
                     **{k: summary.metrics.get(k) for k in COLUMNS}})
    if args.watershed:
        rows.append(watershed_row(args.data))
    title = (f"mask AP on {args.data} val, {args.config} trained {args.minutes:g} min "
             f"({summary.status})")
    (summary.run_dir / "small_data.json").write_text(json.dumps(rows, indent=1))
    print(render(rows, title))


if __name__ == "__main__":
    main()
