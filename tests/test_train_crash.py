"""Crash safety: a process killed while writing last.pth leaves the previous one loadable, and
`sparseinst train` exits 2 with one line on a user mistake, 130 after --stop-after."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from train_support import TINY, make_dataset
from typer.testing import CliRunner

from sparseinst_cli.cli.app import app
from sparseinst_cli.training.state import read_train_state

WRITER = textwrap.dedent("""
    import sys, torch
    from sparseinst_cli.config import Config
    from sparseinst_cli.training.state import Labels, save_train_state
    model = torch.nn.Linear(4000, 10000)  # 160 MB: every write takes a while
    for i in range(1, 1000):
        save_train_state(sys.argv[1], model=model, cfg=Config(), labels=Labels(["a"], [1]),
                         train_state={"iteration": i})
""")


def test_kill_while_writing_leaves_last_loadable(tmp_path):
    last = tmp_path / "last.pth"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(last)])
    try:
        deadline = time.monotonic() + 120
        while not last.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        while not list(tmp_path.glob(".last.pth.*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.002)  # wait until the next write is under way
        assert list(tmp_path.glob(".last.pth.*.tmp")), "no write in progress was seen"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert read_train_state(last)["train_state"]["iteration"] >= 1


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def test_cli_trains_stops_and_resumes(data, tmp_path):
    runner = CliRunner()
    base = ["train", "-c", "demo", "-d", str(data), "--project", str(tmp_path), "--name", "cli",
            "--device", "cpu", *TINY, "solver.max_iter=4"]
    stopped = runner.invoke(app, [*base, "--stop-after", "2"])
    assert stopped.exit_code == 130, stopped.output
    assert read_train_state(tmp_path / "cli" / "last.pth")["iteration"] == 2
    resumed = runner.invoke(app, ["train", "--resume", "--name", "cli", "--project",
                                  str(tmp_path), "--device", "cpu"])
    assert resumed.exit_code == 0, resumed.output
    assert "final val mask AP" in resumed.output and "done: 4 iterations" in resumed.output
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == [
        "best.pth", "config.yaml", "last.pth", "metrics.jsonl", "metrics.png"]


def test_cli_user_mistake_is_one_line_and_status_2(data, tmp_path):
    cmd = [sys.executable, "-m", "sparseinst_cli", "train", "-c", "demo", "-d", str(data),
           "--project", str(tmp_path), "--device", "cpu", "--amp", "fp16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "fp16" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not Path(tmp_path / "exp").exists()


def test_ctrl_c_to_the_process_group_with_loader_workers(data, tmp_path):
    """The terminal sends SIGINT to every process, data loader workers included."""
    cmd = [sys.executable, "-m", "sparseinst_cli", "train", "-c", "demo", "-d", str(data),
           "--project", str(tmp_path), "--name", "int", "--device", "cpu", "--workers", "1",
           *TINY, "solver.max_iter=100000", "solver.checkpoint_period=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    last = tmp_path / "int" / "last.pth"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(3.0)  # some iterations with the worker running
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "--resume --name int" in out.replace("\n", "")
    assert read_train_state(last)["iteration"] > 0
