"""Time `predict` on a video with its three stages at once (read, model, write) and one after
another, in one process, taking turns, and print the medians:

    python benchmarks/predict_pipeline.py                  # 24 frames, fp32, 640 short side
    python benchmarks/predict_pipeline.py --dtype bf16 --frames 48 --repeats 5

The model is the official R-50 G-IAM layout with deterministic synthetic weights (every query
passes the score threshold, so post-processing, drawing and encoding do their full work); the
video is the bench picture panned a few pixels a frame, written once to a temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "tests/data/000000006471.jpg"


def make_video(path: Path, frames: int) -> Path:
    import cv2
    import numpy as np

    image = cv2.imread(str(IMAGE))
    h, w = image.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
    for i in range(frames):
        writer.write(cv2.warpAffine(image, np.float32([[1, 0, i], [0, 1, 0]]),
                                    (w, h), borderMode=cv2.BORDER_REFLECT))
    writer.release()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()

    from sparseinst_cli.runtime import set_spin_count

    set_spin_count(sys.argv)  # as the `sparseinst` command does, before torch loads
    import json

    import torch

    sys.path.insert(0, str(ROOT / "tests" / "data"))
    from synth_checkpoint import synth_state_dict

    from sparseinst_cli.engine.predict import PredictOptions, run_predict
    from sparseinst_cli.media.sources import expand_sources
    from sparseinst_cli.predictor import Predictor, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="sparseinst_pipeline_"))
    layout = json.loads((ROOT / "tests/data/layouts/r50_giam.json").read_text())["state_dict"]
    weights = tmp / "r50_giam.pth"
    torch.save({"model": synth_state_dict(layout)}, weights)
    predictor = Predictor(None, loaded=load_model(weights, "r50_giam"), dtype=args.dtype,
                          min_size=args.size, max_size=853)
    items = expand_sources([str(make_video(tmp / "clip.mp4", args.frames))])
    times: dict[str, list[float]] = {"one after another": [], "at once": []}
    for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
        for name, pipelined in (("one after another", False), ("at once", True)):
            opts = PredictOptions(out_dir=tmp / "out", conf=0.0, pipelined=pipelined)
            start = time.perf_counter()
            summary = run_predict(predictor, items, opts)
            if repeat:
                times[name].append(time.perf_counter() - start)
    print(f"{summary.frames} frames of {IMAGE.name} at {args.size}, {args.dtype}, "
          f"{torch.get_num_threads()} torch threads, {summary.instances // summary.frames} "
          f"instances a frame, medians of {args.repeats}:")
    base = statistics.median(times["one after another"])
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:18s} {med:7.2f} s  {args.frames / med:5.2f} frames/s  "
              f"{base / med:4.2f}x")


if __name__ == "__main__":
    main()
