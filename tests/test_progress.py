"""Progress where it serves: plain lines in logs from long commands, tqdm in the Python API."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparseinst_cli.predictor import Predictor

IMAGES = 12


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(
            folder / f"{i:03d}.png")
    return folder


def test_predict_into_a_log_file_writes_progress_lines(many_images, tiny_checkpoint, tmp_path):
    """`sparseinst predict FOLDER ... > log.txt`: no live bar, plain `predict k/N` lines (every
    $SPARSEINST_PROGRESS_EVERY seconds; 0 here, so one per image) and the last one."""
    log = tmp_path / "log.txt"
    env = {**os.environ, "SPARSEINST_PROGRESS_EVERY": "0"}
    with open(log, "w") as f:
        result = subprocess.run(
            [sys.executable, "-m", "sparseinst_cli", "predict", str(many_images), "--weights",
             str(tiny_checkpoint), "--out", str(tmp_path / "out"), "--no-images"],
            stdout=f, stderr=subprocess.PIPE, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    lines = re.findall(r"^predict (\d+)/(\d+)", log.read_text(), flags=re.M)
    assert len(lines) == IMAGES
    assert lines[-1] == (str(IMAGES), str(IMAGES))


def test_the_python_api_shows_tqdm_progress_when_asked(many_images, tiny_checkpoint, capsys):
    predictor = Predictor(tiny_checkpoint)
    paths = sorted(many_images.iterdir())
    preds = list(predictor.predict_many(paths, batch_size=5, progress=True))
    err = capsys.readouterr().err
    assert len(preds) == IMAGES and f"{IMAGES}/{IMAGES}" in err and "predict" in err
    quiet = list(predictor.predict_many(paths[:2], progress=False))
    assert len(quiet) == 2 and capsys.readouterr().err == ""
    one = predictor.predict(paths[0]).instances
    # the same as one at a time (batched convolutions round differently in the last bits)
    assert np.allclose(preds[0].instances.scores.numpy(), one.scores.numpy(), atol=1e-5)


def test_train_and_eval_write_the_same_kind_of_plain_lines(monkeypatch, capsys):
    """Off a terminal, train's `iter k/N eta m:ss losses` and eval's `eval MODEL k/N` come from
    the same mechanism (cli/console.py), every $SPARSEINST_PROGRESS_EVERY seconds."""
    from sparseinst_cli.cli.evaluate import ImagesBar
    from sparseinst_cli.cli.train import RichTrainCallbacks

    monkeypatch.setenv("SPARSEINST_PROGRESS_EVERY", "0")
    callbacks = RichTrainCallbacks()
    for iteration in (1, 2):
        callbacks.on_iteration(iteration, 10, {"total_loss": 1.0, "loss_cls": 0.5}, 1e-3)
    bar = ImagesBar("model.pth")
    for done in (1, 3):
        bar(done, 3)
    out = capsys.readouterr().out
    assert re.search(r"^iter 2/10 eta 0:\d\d loss 1\.00 \(cls 0\.50\) lr 1\.0e-03$", out, re.M)
    assert re.findall(r"^eval model\.pth (\d)/3", out, re.M) == ["1", "3"]
    monkeypatch.setenv("SPARSEINST_PROGRESS_EVERY", "3600")
    bar = ImagesBar("model.pth")
    for done in (1, 2, 3):
        bar(done, 3)
    assert re.findall(r"^eval model\.pth (\d)/3", capsys.readouterr().out, re.M) == ["1", "3"]
