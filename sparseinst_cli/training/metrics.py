"""Training metrics: running averages for display, JSON lines on disk, and the PNG plot."""
from __future__ import annotations

import json
import math
from collections import deque
from pathlib import Path
from typing import Any

AP_KEYS = ("AP", "AP50", "AP75")


class WindowAverages:
    """Median of the last `window` values of each loss (what the progress bar shows)."""

    def __init__(self, window: int = 20):
        self.window = window
        self.values: dict[str, deque[float]] = {}

    def update(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            if math.isfinite(value):
                self.values.setdefault(key, deque(maxlen=self.window)).append(value)

    def medians(self) -> dict[str, float]:
        return {k: sorted(v)[len(v) // 2] for k, v in self.values.items() if v}


class MetricsLog:
    """Appends one JSON object per line: `{"type": "train"|"eval"|"event", "iter": i, ...}`."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, kind: str, iteration: int, **values: Any) -> None:
        record = {"type": kind, "iter": iteration, **values}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                continue
        return out

    def truncate_after(self, iteration: int) -> None:
        """Drop records past `iteration` (a resumed or rolled-back run writes them again)."""
        kept = [r for r in self.read() if r.get("iter", 0) <= iteration]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


def plot_metrics(records: list[dict[str, Any]], path: Path) -> None:
    """Three panels over iterations: losses, learning rate, mask AP. Written with Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    its = [r["iter"] for r in train]
    loss_keys = sorted({k for r in train for k in r if k.startswith("loss") or k == "total_loss"})
    for key in loss_keys:
        axes[0].plot(its, [r.get(key, math.nan) for r in train], label=key)
    axes[0].set_title("losses")
    axes[0].set_yscale("log")
    axes[1].plot(its, [r.get("lr", math.nan) for r in train])
    axes[1].set_title("learning rate")
    for key in AP_KEYS:
        axes[2].plot([r["iter"] for r in evals], [_nan(r.get(key)) for r in evals], "o-", label=key)
    axes[2].set_title("val mask AP")
    for ax, legend in zip(axes, (bool(loss_keys), False, bool(evals))):
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if legend:
            ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)
