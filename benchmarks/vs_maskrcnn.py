"""Time SparseInst R-50 G-IAM against torchvision's Mask R-CNN R-50-FPN on the same image.

Both run forward plus post-processing on one image, after warm-up, taking turns, and the script
prints the medians and the median of the pairwise ratios, so progress can be tracked on any
machine:

    python benchmarks/vs_maskrcnn.py                 # fp32, 640 short side, 853 long side max
    python benchmarks/vs_maskrcnn.py --dtype bf16    # our model in bf16 (Mask R-CNN stays fp32)
    python benchmarks/vs_maskrcnn.py --dtype int8    # our int8 ONNX graph in ONNX Runtime

Each model runs in a worker process of its own, so that each gets its own OpenMP settings:
ours what `sparseinst` chooses, Mask R-CNN libgomp's defaults (unless GOMP_SPINCOUNT is set in
the environment, which then holds for both); both keep freed memory for reuse (glibc), as our
Predictor does. The workers take turns, one timed run each, so a machine that speeds up or
slows down affects both alike.

Our model gets the official R-50 G-IAM layout with deterministic synthetic weights (every query
passes the score threshold, so post-processing does its full work); Mask R-CNN has seeded random
weights (`weights=None`), min_size=640, max_size=853, and resizes inside its own transform.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "tests/data/000000006471.jpg"


# ----------------------------------------------------------------------------- workers


def serve(run, post_only=None) -> None:
    """Answer the parent: 'run' -> one timed call in ms, 'post' -> post-processing only."""
    import time

    for command in sys.stdin:
        fn = post_only if command.strip() == "post" else run
        start = time.perf_counter()
        fn()
        print(f"{(time.perf_counter() - start) * 1000:.3f}", flush=True)


def say_ready(torch, spin: str | None, **facts: str) -> None:
    facts.update(threads=str(torch.get_num_threads()), spin=spin or "default",
                 torch=torch.__version__)
    print("ready " + " ".join(f"{k}={v}" for k, v in facts.items()), flush=True)


def sparseinst_worker(args: argparse.Namespace) -> None:
    import json
    import tempfile

    # isort: off
    from sparseinst_cli.runtime import set_spin_count

    set_spin_count(sys.argv)  # as the `sparseinst` command does, before torch loads
    import torch
    # isort: on

    sys.path.insert(0, str(ROOT / "tests" / "data"))
    from synth_checkpoint import synth_state_dict

    from sparseinst_cli.fileio import read_image_rgb
    from sparseinst_cli.predictor import Predictor, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    layout = json.loads((ROOT / "tests/data/layouts/r50_giam.json").read_text())["state_dict"]
    path = Path(tempfile.gettempdir()) / "sparseinst_bench_r50_giam.pth"
    if not path.exists():
        torch.save({"model": synth_state_dict(layout)}, path)
    loaded = load_model(path, "r50_giam")
    if args.dtype == "int8":
        loaded, dtype = load_model(int8_graph(loaded, args.size)), "fp32"
    else:
        dtype = args.dtype
    predictor = Predictor(
        None, loaded=loaded, dtype=dtype, min_size=args.size, max_size=853,
        optimize=not args.no_optimize,
    )
    batch = predictor.prepare([read_image_rgb(str(IMAGE))])  # not timed, as in the paper
    outputs = predictor.forward(batch)
    height, width = batch.images.shape[-2:]
    say_ready(torch, os.environ.get("GOMP_SPINCOUNT"), padded=f"{width}x{height}")
    serve(
        lambda: predictor.postprocess(predictor.forward(batch), batch),
        lambda: predictor.postprocess(outputs, batch),
    )


def int8_graph(loaded, size: int) -> Path:
    """The model as a static ONNX graph at the bench image's padded input, its convolutions in
    int8 (what `sparseinst export --int8` writes), calibrated on the bench image. Synthetic
    weights keep every mask near the threshold, so export's int8 parity check is not run."""
    import tempfile

    from sparseinst_cli.export import ExportOptions, export_model
    from sparseinst_cli.export.int8 import quantize_convolutions
    from sparseinst_cli.export.onnx import add_metadata, read_metadata
    from sparseinst_cli.export.parity import parity_batch
    from sparseinst_cli.fileio import read_image_rgb
    from sparseinst_cli.predictor import Predictor

    hw = tuple(Predictor(None, loaded=loaded, min_size=size, max_size=853)
               .prepare([read_image_rgb(str(IMAGE))]).images.shape[-2:])
    folder = Path(tempfile.gettempdir())
    fp32 = folder / f"sparseinst_bench_r50_giam_{hw[0]}x{hw[1]}.onnx"
    int8 = fp32.with_suffix(".int8.onnx")
    if not int8.exists():
        export_model(loaded, ExportOptions(out=fp32, size=hw))
        image = parity_batch(read_image_rgb(str(IMAGE)), hw, list(loaded.config.model.pixel_mean))
        quantize_convolutions(fp32, int8, [image.images.numpy()])
        add_metadata(int8, {**read_metadata(fp32), "precision": "int8"})
    return int8


def maskrcnn_worker(args: argparse.Namespace) -> None:
    spin = os.environ.get("GOMP_SPINCOUNT")  # what libgomp reads when torch loads, next
    import cv2
    import torch
    import torchvision

    # The allocator setting that our Predictor makes helps any CPU model: Mask R-CNN gets it
    # too (importing sparseinst_cli after torch leaves libgomp's spin as it was).
    from sparseinst_cli.runtime import keep_freed_memory

    keep_freed_memory()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=640, max_size=853
    ).eval()
    image = cv2.imread(str(IMAGE), cv2.IMREAD_COLOR)[:, :, ::-1]
    tensor = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255
    say_ready(torch, spin)

    @torch.inference_mode()
    def run():
        model([tensor])

    serve(run)


# ----------------------------------------------------------------------------- parent


class Worker:
    def __init__(self, role: str, args: argparse.Namespace, env: dict[str, str]):
        command = [sys.executable, __file__, "--worker", role, "--dtype", args.dtype,
                   "--size", str(args.size), "--threads", str(args.threads)]
        if args.no_optimize:
            command.append("--no-optimize")
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.facts = dict(item.split("=", 1) for item in self._line().split()[1:])

    def _line(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"benchmark worker exited with {self.process.wait()}")
        return line.strip()

    def time_ms(self, command: str = "run") -> float:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return float(self._line())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def p90(times: list[float]) -> float:
    return statistics.quantiles(times, n=10)[-1] if len(times) >= 2 else times[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "int8"],
                        help="ours: PyTorch fp32 / bf16, or the int8 ONNX graph (onnxruntime)")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--no-optimize", action="store_true", help="time the unfused model")
    parser.add_argument("--worker", choices=["sparseinst", "maskrcnn"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        (sparseinst_worker if args.worker == "sparseinst" else maskrcnn_worker)(args)
        return

    # Each worker has built its model when it says ready, so the start-ups do not overlap.
    ours = Worker("sparseinst", args, dict(os.environ))
    theirs = Worker("maskrcnn", args, dict(os.environ))
    try:
        for _ in range(args.warmup):
            ours.time_ms(), theirs.time_ms()
        ours_t, theirs_t = [], []
        for _ in range(args.iters):
            ours_t.append(ours.time_ms())
            theirs_t.append(theirs.time_ms())
        post_t = [ours.time_ms("post") for _ in range(args.iters)]
    finally:
        ours.close()
        theirs.close()
    ratios = [a / b for a, b in zip(ours_t, theirs_t)]
    med = statistics.median
    print(
        f"torch {ours.facts['torch']}, {ours.facts['threads']} threads, image {IMAGE.name} padded "
        f"to {ours.facts['padded']}, {args.iters} alternating runs after {args.warmup} warm-up; "
        f"GOMP_SPINCOUNT: ours {ours.facts['spin']}, Mask R-CNN {theirs.facts['spin']}"
    )
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
