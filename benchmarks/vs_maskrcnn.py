"""Time SparseInst R-50 G-IAM against torchvision's Mask R-CNN R-50-FPN on the same image.

Both run forward plus post-processing on one image in one process, after warm-up, and the script
prints the medians and their ratio, so progress can be tracked on any machine:

    python benchmarks/vs_maskrcnn.py                 # fp32, 640 short side, 853 long side max
    python benchmarks/vs_maskrcnn.py --dtype bf16    # our model in bf16 (Mask R-CNN stays fp32)

Our model gets the official R-50 G-IAM layout with deterministic synthetic weights (every query
passes the score threshold, so post-processing does its full work); Mask R-CNN has random
weights (`weights=None`), min_size=640, max_size=853, and resizes inside its own transform.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# isort: off
import sparseinst_cli  # noqa: F401 - first: sets GOMP_SPINCOUNT before torch loads (both models)
import torch
import torchvision
# isort: on

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "data"))

from synth_checkpoint import synth_state_dict  # noqa: E402

from sparseinst_cli.data.coco import read_image_rgb  # noqa: E402
from sparseinst_cli.predictor import Predictor, load_model  # noqa: E402


def timed_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def interleaved(fn_a, fn_b, warmup: int, iters: int) -> tuple[list[float], list[float]]:
    """Run A and B alternately, so a machine that speeds up or slows down affects both alike."""
    for _ in range(warmup):
        fn_a(), fn_b()
    times_a, times_b = [], []
    for _ in range(iters):
        times_a.append(timed_ms(fn_a))
        times_b.append(timed_ms(fn_b))
    return times_a, times_b


def p90(times: list[float]) -> float:
    return statistics.quantiles(times, n=10)[-1] if len(times) >= 2 else times[0]


def sparseinst_runner(image, dtype: str, size: int, optimize: bool):
    layout = json.loads((ROOT / "tests/data/layouts/r50_giam.json").read_text())["state_dict"]
    path = Path("/tmp/sparseinst_bench_r50_giam.pth")
    if not path.exists():
        torch.save({"model": synth_state_dict(layout)}, path)
    loaded = load_model(path, "r50_giam")
    predictor = Predictor(
        None, loaded=loaded, dtype=dtype, min_size=size, max_size=853, optimize=optimize
    )
    batch = predictor.prepare([image])  # reading and resizing are not timed, as in the paper
    outputs = predictor.forward(batch)

    def run():
        predictor.postprocess(predictor.forward(batch), batch)

    def post_only():
        predictor.postprocess(outputs, batch)

    return run, post_only, tuple(batch.images.shape[-2:])


def maskrcnn_runner(image):
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=640, max_size=853
    ).eval()
    tensor = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255

    @torch.inference_mode()
    def run():
        model([tensor])

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=str(ROOT / "tests/data/000000006471.jpg"))
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-optimize", action="store_true", help="time the unfused model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = read_image_rgb(args.image)
    ours, post_only, padded = sparseinst_runner(image, args.dtype, args.size, not args.no_optimize)
    ours_t, theirs_t = interleaved(ours, maskrcnn_runner(image), args.warmup, args.iters)
    post_t = [timed_ms(post_only) for _ in range(args.iters)]
    ratios = [a / b for a, b in zip(ours_t, theirs_t)]
    print(
        f"torch {torch.__version__}, {args.threads} threads, "
        f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'unset (libgomp default)')}, "
        f"image {image.shape[1]}x{image.shape[0]} -> padded {padded[1]}x{padded[0]}, "
        f"{args.iters} interleaved runs after {args.warmup} warm-up"
    )
    med = statistics.median
    print(
        f"SparseInst R-50 G-IAM ({args.dtype}): "
        f"median {med(ours_t):.1f} ms  p90 {p90(ours_t):.1f} ms"
    )
    print(f"  of which post-processing (100 instances, original size): {med(post_t):.1f} ms")
    print(
        f"Mask R-CNN R-50-FPN (fp32):     median {med(theirs_t):.1f} ms  p90 {p90(theirs_t):.1f} ms"
    )
    print(f"ratio SparseInst / Mask R-CNN: median of pairs {med(ratios):.3f}")


if __name__ == "__main__":
    main()
