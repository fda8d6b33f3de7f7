"""Time `predict` on a video with its three stages at once (read, model, write) and one after
another, in one process, taking turns, and print the medians beside `sparseinst bench`'s speed
(forward + post-processing of a picture already in memory) for the same model and size:

    python benchmarks/predict_pipeline.py                  # 24 frames, fp32, 640 short side
    python benchmarks/predict_pipeline.py --dtype bf16 --frames 48 --repeats 5
    python benchmarks/predict_pipeline.py --frames 300 --clip 640x480 --size 480 --repeats 1 \
        --weights runs/train/exp/best.pth                  # a trained model of ours

The model is the official R-50 G-IAM layout with deterministic synthetic weights unless
--weights is given (every query passes the score threshold, so post-processing, drawing and
encoding do their full work); the video is the bench picture panned a pixel a frame (resized to
--clip), written once to a temporary folder.
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


def make_video(path: Path, frames: int, size: tuple[int, int] | None = None) -> Path:
    """A clip of `frames` frames of the bench picture (resized to `size` = (w, h) if given)."""
    import cv2
    import numpy as np

    image = cv2.imread(str(IMAGE))
    if size is not None:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
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
    parser.add_argument("--clip", default="", help="clip size WxH, e.g. 640x480 (default: the "
                        "bench picture's)")
    parser.add_argument("--weights", type=Path, help="checkpoint of ours (default: synthetic "
                        "R-50 G-IAM weights)")
    parser.add_argument("--conf", type=float, default=0.0, help="predict's --conf (default 0: "
                        "draw every instance, the heaviest case; the command's own default is 0.3)")
    args = parser.parse_args()
    clip = tuple(int(v) for v in args.clip.split("x")) if args.clip else None

    from sparseinst_cli.runtime import set_spin_count

    set_spin_count(sys.argv)  # as the `sparseinst` command does, before torch loads
    import json

    import torch

    sys.path.insert(0, str(ROOT / "tests" / "data"))
    from synth_checkpoint import synth_state_dict

    from sparseinst_cli.engine.benchmark import BenchSettings, benchmark
    from sparseinst_cli.engine.predict import PredictOptions, run_predict
    from sparseinst_cli.media.sources import expand_sources
    from sparseinst_cli.predictor import Predictor, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="sparseinst_pipeline_"))
    if args.weights:
        loaded = load_model(args.weights, None)
    else:
        layout = json.loads((ROOT / "tests/data/layouts/r50_giam.json").read_text())
        weights = tmp / "r50_giam.pth"
        torch.save({"model": synth_state_dict(layout["state_dict"])}, weights)
        loaded = load_model(weights, "r50_giam")
    predictor = Predictor(None, loaded=loaded, dtype=args.dtype, min_size=args.size,
                          max_size=853)
    video = make_video(tmp / "clip.mp4", args.frames, clip)
    items = expand_sources([str(video)])
    times: dict[str, list[float]] = {"one after another": [], "at once": []}
    for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
        for name, pipelined in (("one after another", False), ("at once", True)):
            opts = PredictOptions(out_dir=tmp / "out", conf=args.conf, pipelined=pipelined)
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
    import cv2

    ok, frame = cv2.VideoCapture(str(video)).read()
    assert ok, f"cannot read {video}"
    bench = benchmark(loaded, frame[:, :, ::-1].copy(), variant="clip", size=args.size,
                      settings=BenchSettings(dtype=args.dtype, max_size=853,
                                             threads=args.threads or None))
    bench_fps = 1000 / bench.total_ms.median
    predict_fps = args.frames / statistics.median(times["at once"])
    print(f"  bench (forward + post-processing, median of {bench.iters}): {bench_fps:5.2f} "
          f"frames/s; predict at once / bench: {predict_fps / bench_fps:.2f}")


if __name__ == "__main__":
    main()
