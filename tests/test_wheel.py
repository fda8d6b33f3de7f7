"""The wheel carries what commands need at run time: every zoo config, resolved by name from an
installed copy run outside the checkout."""
from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from sparseinst_cli.config import zoo_names

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600,
                          **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the built wheel installed; the dependencies come from this venv
    through a .pth file (no download, and the checkout's editable finder stays out)."""
    tmp = tmp_path_factory.mktemp("wheel")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-w", tmp / "dist", ROOT])
    assert built.returncode == 0, built.stderr
    venv = tmp / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", venv]).returncode == 0
    python = venv / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    (Path(purelib.stdout.strip()) / "deps.pth").write_text("\n".join(site.getsitepackages()))
    wheel = next((tmp / "dist").glob("sparseinst_cli-*.whl"))
    done = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                 "--no-index", wheel])
    assert done.returncode == 0, done.stderr
    return venv


def test_every_zoo_name_resolves_from_the_installed_wheel(installed, tmp_path):
    code = ("import sparseinst_cli, sparseinst_cli.config as c; print(sparseinst_cli.__file__); "
            "print(' '.join(c.zoo_names())); [c.load_config(n) for n in c.zoo_names()]")
    env = {k: v for k, v in os.environ.items() if k != "SPARSEINST_ZOO"}
    out = _run([installed / "bin" / "python", "-c", code], cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    location, names = out.stdout.splitlines()
    assert Path(location).is_relative_to(installed)  # the wheel's copy, not the checkout
    assert names.split() == zoo_names() and "small" in names.split()


def test_bench_runs_by_zoo_name_from_another_folder(installed, tmp_path):
    out = _run([installed / "bin" / "sparseinst", "bench", "--config", "r50_giam", "--size", 320,
                "--iters", 1, "--warmup", 0], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "r50_giam" in out.stdout and "320" in out.stdout


def test_models_folder_and_package_zoo_agree():
    packaged = ROOT / "sparseinst_cli" / "zoo"
    assert packaged.resolve() == (ROOT / "models").resolve() or sorted(
        p.read_text() for p in packaged.glob("*.yaml")
    ) == sorted(p.read_text() for p in (ROOT / "models").glob("*.yaml"))
