"""Fuzzed COCO files: each ends in a one-line error or a load, under a memory cap, never a crash.

The cases (fuzz_support.corrupt, seeded) run in one subprocess whose address space is capped
at what it holds after imports plus MEMORY_MB: a file that makes the loader allocate from its
numbers (a NaN polygon, an RLE of 10^12 pixels) fails the test instead of the machine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from fuzz_support import corrupt, write_images

CASES = 240
MEMORY_MB = 1500
SUPPORT = Path(__file__).parent / "fuzz_support.py"


def write_cases(folder: Path) -> None:
    write_images(folder / "images")
    for seed in range(CASES):
        path = folder / f"case_{seed}.json"
        path.write_text(json.dumps(corrupt(seed)))  # NaN / Infinity as Python's json writes
        path.with_suffix(".yaml").write_text(yaml.safe_dump(
            {"train": {"images": "images", "annotations": path.name}}))


def test_fuzzed_coco_files_end_in_one_line_or_a_load(tmp_path: Path) -> None:
    write_cases(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(SUPPORT), str(tmp_path), str(MEMORY_MB)],
                          capture_output=True, text=True, env=env, timeout=300)
    seconds = time.monotonic() - start
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    done = {r["case"] for r in records}
    assert proc.returncode == 0, (
        f"worker died (status {proc.returncode}) on case {min(set(range(CASES)) - done)}: "
        f"{proc.stderr[-2000:]}")
    assert len(records) == CASES
    crashes = [r for r in records if r["outcome"] == "crash"]
    assert not crashes, "\n".join(f"case {r['case']}: {r['message']}" for r in crashes[:5])
    outcomes = {o: sum(r["outcome"] == o for r in records) for o in ("ok", "error")}
    assert outcomes["ok"] >= CASES // 10 and outcomes["error"] >= CASES // 3, outcomes
    assert records[0]["outcome"] == "ok"  # the untouched base file loads
    assert seconds < 60, f"{CASES} cases took {seconds:.0f} s"
