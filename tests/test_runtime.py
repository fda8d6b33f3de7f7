"""Process-level runtime settings: freed memory kept for reuse (glibc), OpenMP spin count."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sparseinst_cli.runtime import keep_freed_memory, only_reduced_precision

# The demo model predicts one 640x960 image six times in a fresh process; prints the page faults
# of the last four runs. By default glibc returns the freed activations to the OS after each
# image and faults them in again (zeroed) on the next.
_PREDICT_REPEATEDLY = """
import resource, sys
import numpy as np
import sparseinst_cli.predictor as predictor_module
if sys.argv[1] == "default":
    predictor_module.keep_freed_memory = lambda: False
predictor = predictor_module.Predictor(None, "demo", min_size=640, max_size=1333)
image = (np.random.default_rng(0).random((640, 960, 3)) * 255).astype(np.uint8)
faults = []
for _ in range(6):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    predictor.predict(image)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
print(sum(faults[2:]))
"""


def _page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PREDICT_REPEATEDLY, mode], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_predictor_reuses_freed_memory_without_page_faults():
    if not keep_freed_memory():
        pytest.skip("this libc has no mallopt")
    default, kept = _page_faults("default"), _page_faults("keep")
    assert default > 20_000  # ~13,000 per image on this model and size
    assert kept < default / 20


@pytest.mark.parametrize(
    ("argv", "reduced"),
    [
        (["sparseinst", "bench", "--dtype", "bf16"], True),
        (["sparseinst", "eval", "--dtype=fp16"], True),
        (["sparseinst", "bench", "--dtype", "fp32"], False),
        (["sparseinst", "bench", "--dtype", "fp32", "--dtype", "bf16"], False),  # mixed
        (["sparseinst", "predict", "bf16"], False),  # a file named bf16, not the option
        (["sparseinst", "bench", "--dtype"], False),
    ],
)
def test_reduced_precision_is_read_off_the_command_line(argv, reduced):
    assert only_reduced_precision(argv) == reduced


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {}, "1000"),  # short spins: NNPACK's threads keep the cores
        (["--dtype", "bf16"], {}, "unset"),  # libgomp's default: no wake-up per oneDNN op
        (["--dtype", "bf16"], {"GOMP_SPINCOUNT": "5"}, "5"),  # the user's setting wins
    ],
)
def test_spin_count_is_set_before_torch_loads(args, env, expected):
    """The `sparseinst` entry function (cli/entry.py) sets it; printed as torch loads."""
    code = (
        "import os, sys\n"
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            print(os.environ.get('GOMP_SPINCOUNT', 'unset'), flush=True)\n"
        "            os._exit(0)\n"
        "sys.meta_path.insert(0, Spy())\n"
        "from sparseinst_cli.cli.entry import main\n"
        "main()\n"
    )
    clean = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    out = subprocess.run(
        [sys.executable, "-c", code, *args], env={**clean, **env},
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == expected


def test_importing_the_app_reads_no_argv_and_sets_no_spin_count():
    """A docs generator or a test that imports the Typer app gets no side effect from it."""
    code = (
        "import os, sys\n"
        "class Tripwire(list):\n"
        "    def _trip(self, *a, **k):\n"
        "        raise AssertionError('sys.argv read at import')\n"
        "    __iter__ = __getitem__ = __contains__ = __len__ = _trip\n"
        "sys.argv = Tripwire()\n"
        "import sparseinst_cli.cli.app\n"
        "sys.argv = ['sparseinst']\n"
        "print(os.environ.get('GOMP_SPINCOUNT', 'unset'))\n"
    )
    clean = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "unset"
