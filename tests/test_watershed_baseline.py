"""benchmarks/watershed_baseline.py: its COCO results file is scored by `sparseinst eval`."""

import json
import sys

import numpy as np
from file_support import load_benchmark

from sparseinst_cli.cli.app import main
from sparseinst_cli.data.synthetic.crowded import make_crowded_dataset


def test_flood_splits_two_touching_discs():
    ws = load_benchmark("watershed_baseline")
    yy, xx = np.mgrid[:40, :60]
    gray = np.zeros((40, 60), np.uint8)
    gray[((yy - 20) ** 2 + (xx - 20) ** 2 < 121) | ((yy - 20) ** 2 + (xx - 39) ** 2 < 121)] = 200
    labels, _ = ws.segment(gray)
    assert labels.max() == 2 and labels[20, 20] != labels[20, 39]
    assert 300 < (labels == labels[20, 20]).sum() < 420


def test_results_scored_by_eval(tmp_path, monkeypatch, capsys):
    data = make_crowded_dataset(tmp_path / "crowded", num_train=1, num_val=2)
    out = tmp_path / "ws" / "results.json"
    load_benchmark("watershed_baseline").main(["--data", str(data), "--out", str(out)])
    results = json.loads(out.read_text())
    assert results and {r["category_id"] for r in results} == {1}
    assert all(0 <= r["score"] <= 1 and r["image_id"] in (1, 2) for r in results)
    monkeypatch.setattr(sys, "argv", ["sparseinst", "eval", "--results", str(out), "--data",
                                      str(data), "--project", str(tmp_path), "--name", "ev"])
    try:
        main()
    except SystemExit as exc:
        assert not exc.code
    capsys.readouterr()
    [record] = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 10 < record["AP"] < 90 and record["images"] == 2
