"""Every bad input the CLI promises to answer, through the installed `sparseinst` script.

Each case checks: a non-zero exit (2 for a user's mistake, 1 for a failure), exactly one line
on stderr naming the problem, no traceback, and no file left behind in the working folder.
Faults that cannot be caused for real on a test machine (a full disk, running out of memory,
a machine with one GPU) are injected into the same entry point before it starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from train_support import make_dataset

SCRIPT = Path(sys.executable).with_name("sparseinst")

# Python run before the real entry point, in the same process.
FAULTS = {
    "out_of_memory": (
        "import torch.nn.functional as F\n"
        "def conv2d(*args, **kwargs):\n"
        "    raise RuntimeError(\"DefaultCPUAllocator: can't allocate memory: you tried to "
        "allocate 4831838208 bytes. Error code 12 (Cannot allocate memory)\")\n"
        "F.conv2d = conv2d\n"
    ),
    "full_disk": (
        "import errno, os\n"
        "def fsync(fd):\n"
        "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "os.fsync = fsync\n"
    ),
    "no_onnx": "import sys\nsys.modules['onnx'] = None\n",  # import onnx raises ImportError
    "one_gpu": (
        "import torch\n"
        "torch.cuda.is_available = lambda: True\n"
        "torch.cuda.device_count = lambda: 1\n"
    ),
}
ENTRY = "import sys\nfrom sparseinst_cli.cli.app import main\nsys.argv[0] = 'sparseinst'\nmain()\n"

# (case id, arguments, fault or None, exit status, words the one stderr line must contain)
CASES = [
    ("missing_file", ["eval", "-w", "{work}/missing.pth", "--data", "{data}"], None, 2,
     ["missing.pth"]),
    ("unreadable_file", ["predict", "{image}", "-w", "{folder}", "--out", "{work}/viz"], None, 2,
     ["is a folder", "checkpoint file"]),
    ("folder_without_images", ["predict", "{empty}", "-w", "{tiny}", "--out", "{work}/viz"],
     None, 2, ["no images"]),
    ("corrupt_image", ["predict", "{corrupt}", "-w", "{tiny}", "--out", "{work}/viz"], None, 1,
     ["corrupt.jpg"]),
    ("unknown_config_key", ["train", "-c", "demo", "--data", "{data}", "solver.lrr=0.1"], None,
     2, ["solver.lrr", "solver.lr"]),
    ("unknown_zoo_name", ["bench", "-c", "r50_gaim"], None, 2, ["r50_gaim", "r50_giam"]),
    # The hint's brackets are printed, not read as markup.
    ("export_without_onnx", ["export", "-w", "{tiny}", "--out", "{work}/m.onnx"], "no_onnx", 2,
     ["pip install 'sparseinst-cli[export]'"]),
    # Refused before the run folder exists: nothing is left in runs/.
    ("contradictory_model", ["-q", "train", "-c", "small", "--data", "{data}",
                                   "model.decoder.query_anchors=true"], None, 2,
     ["two kinds of anchors"]),
    ("training_window_too_small", ["-q", "train", "-c", "small", "--data", "{data}",
                                   "input.train_window=-5"], None, 2,
     ["input.train_window must be 0"]),
    ("malformed_yaml", ["train", "-c", "{bad_yaml}", "--data", "{data}"], None, 2,
     ["bad.yaml"]),
    ("annotations_not_coco", ["eval", "-w", "{tiny}", "--data", "{not_coco}"], None, 2,
     ["images", "annotations"]),
    ("checkpoint_config_mismatch", ["predict", "{image}", "-w", "{mismatch}", "-c", "r50_giam",
                                    "--out", "{work}/viz"], None, 2, ["shape"]),
    ("not_a_checkpoint", ["predict", "{image}", "-w", "{garbage}", "--out", "{work}/viz"], None,
     2, ["garbage.pth", "not a PyTorch checkpoint"]),
    ("gpus_beyond_cpu_cores", ["eval", "-w", "{tiny}", "--data", "{data}", "--gpus", "64"],
     None, 2, ["--gpus 64"]),
    ("gpus_beyond_gpus", ["train", "-c", "demo", "--data", "{data}", "--device", "cuda",
                          "--gpus", "4"], "one_gpu", 2, ["--gpus 4", "1 GPU"]),
    ("cuda_without_cuda", ["bench", "-c", "r50_giam", "--device", "cuda"], None, 2,
     ["no CUDA GPU"]),
    ("out_of_memory", ["predict", "{image}", "-w", "{tiny}", "--out", "{work}/viz"],
     "out_of_memory", 1, ["out of memory", "smaller"]),
    ("full_disk", ["predict", "{image}", "-w", "{tiny}", "--out", "{work}/viz"], "full_disk", 1,
     ["no space left", "good.jpg"]),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_checkpoint) -> dict[str, str]:
    root = tmp_path_factory.mktemp("inputs")
    image = root / "good.jpg"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(image), rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (root / "empty").mkdir()
    (root / "folder").mkdir()
    (root / "bad.yaml").write_text("model:\n  backbone: {name: resnet50\n  decoder: [\n")
    (root / "garbage.pth").write_bytes(rng.integers(0, 255, 4096, dtype=np.uint8).tobytes())
    data = make_dataset(root / "coco", n_train=2, n_val=2)
    not_coco = root / "not_coco"
    (not_coco / "images").mkdir(parents=True)
    (not_coco / "labels.json").write_text(json.dumps({"info": {}, "things": []}))
    (not_coco / "data.yaml").write_text(
        "train: {images: images, annotations: labels.json}\n"
        "val: {images: images, annotations: labels.json}\n"
    )
    # Our tiny model's weights saved as an official checkpoint, loaded into R-50 G-IAM.
    weights = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["model"]
    torch.save({"model": weights}, root / "mismatch.pth")
    return {
        "image": str(image), "corrupt": str(root / "corrupt.jpg"), "empty": str(root / "empty"),
        "folder": str(root / "folder"), "bad_yaml": str(root / "bad.yaml"),
        "garbage": str(root / "garbage.pth"), "data": str(data),
        "not_coco": str(not_coco / "data.yaml"), "mismatch": str(root / "mismatch.pth"),
        "tiny": str(tiny_checkpoint),
    }


@pytest.mark.parametrize(("args", "fault", "status", "words"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_gets_one_clear_line(args, fault, status, words, inputs, tmp_path):
    work = tmp_path / "work"  # the working folder: runs/ and any output would land here
    work.mkdir()
    values = {**inputs, "work": str(work)}
    argv = [arg.format(**values) for arg in args]
    command = [str(SCRIPT)] if fault is None else [sys.executable, "-c", FAULTS[fault] + ENTRY]
    result = subprocess.run([*command, *argv], cwd=work, capture_output=True, text=True,
                            timeout=300, env={**_clean_env(), "COLUMNS": "100"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    left = [str(p.relative_to(work)) for p in work.rglob("*") if p.is_file()]
    assert not left, f"files left behind: {left}"


def test_corrupt_training_image_in_a_loader_worker_gets_one_line(tmp_path):
    """A worker's error comes back wrapped in torch's traceback text; the user sees its line."""
    from train_support import TINY

    data = make_dataset(tmp_path / "coco", n_train=2, n_val=2)
    (tmp_path / "coco" / "images" / "train" / "0000.png").write_bytes(b"\x89PNG not an image")
    argv = [str(SCRIPT), "train", "-c", "demo", "--data", str(data), "--workers", "1",
            "--project", str(tmp_path / "runs"), *TINY]
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**_clean_env(), "COLUMNS": "100"})
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(errors) == 1 and "cannot read image" in errors[0] and "0000.png" in errors[0]


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
