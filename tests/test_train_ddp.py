"""Two CPU processes (gloo, spawned or under torchrun) train exactly like one process with the
same global batch. Frozen BN: with BN in train mode each process would normalise its own half."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_support import (
    SMALL_HEAD,
    TINY,
    assert_same_weights,
    large_result,
    make_dataset,
    train,
    weights,
)

from sparseinst_cli.engine.distributed import spawn

STEPS = ("solver.max_iter=3", "solver.eval_period=0", "solver.checkpoint_period=0")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), per_image=2)


@pytest.fixture(scope="module")
def single(data, tmp_path_factory) -> Path:
    return train(data, tmp_path_factory.mktemp("one"), overrides=STEPS).last


def test_two_spawned_processes_equal_one(data, single, tmp_path):
    two = train(data, tmp_path, gpus=2, overrides=STEPS)
    assert two.status == "finished" and two.iteration == 3
    assert_same_weights(weights(single), weights(two.last), atol=1e-5)


def test_small_head_trains_the_same_on_two_processes(data, tmp_path):
    """The small config's head and losses (stride-4 masks, centre prior, peak anchors with their
    centre heatmap loss, the anchor-aware matcher) keep DDP equal to one process."""
    steps = (*STEPS, *SMALL_HEAD)
    one = train(data, tmp_path / "one", overrides=steps)
    two = train(data, tmp_path / "two", gpus=2, overrides=steps)
    assert_same_weights(weights(one.last), weights(two.last), atol=1e-5)
    assert any("mask_spread" in k for k in weights(two.last))
    assert any("centre_head" in k for k in weights(two.last))


def test_torchrun_runs_the_same_entry_point(data, single, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "sparseinst_cli", "-q",
        "train", "-c", "demo", "-d", str(data), "--project", str(tmp_path), "--name", "tr",
        "--device", "cpu", *TINY, *STEPS,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(weights(single), weights(tmp_path / "tr" / "last.pth"), atol=1e-5)


def test_spawn_returns_a_result_larger_than_a_pipe_buffer():
    """Children block writing a large result until the parent reads it: no deadlock."""
    size = 8 << 20
    assert spawn(large_result, 2, (size,)) == bytes(size)
