"""Latency, FPS, parameters and FLOPs of a model, measured as the paper measured them.

One timed step is the network forward pass plus post-processing of an already resized and
padded batch (no reading, no resizing): `Predictor.forward` then `Predictor.postprocess`.
Each part is timed separately (with a device synchronisation on CUDA); the step latency is
their sum. Statistics are the median and the 90th percentile over the timed steps that follow
the warm-up steps.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from ..errors import UserError
from ..loading import LoadedModel
from ..media.samples import BENCH_IMAGE, asset_path
from ..modeling import build_model
from ..predictor import Predictor
from ..preprocess import ImageBatch
from ..runtime import available_cpus

MIN_TRUSTED_WARMUP = 3
MIN_TRUSTED_ITERS = 10

ProgressFn = Callable[[int, int], None]  # (steps done, steps in total) of one measurement


def default_image_path() -> Path:
    """The benchmark image shipped with the package: COCO val2017 000000006471 centre-cropped to
    4:3 (444 x 333) like most COCO photos, so that the long-side limit (853) does not make
    short sides 608 and 640 the same input."""
    return asset_path(BENCH_IMAGE)


def trust_warnings(warmup: int, iters: int) -> list[str]:
    """Messages for warm-up / iteration counts too small for stable numbers (empty when fine)."""
    notes = []
    if warmup < MIN_TRUSTED_WARMUP:
        notes.append(
            f"--warmup {warmup} is below {MIN_TRUSTED_WARMUP}: the first steps include kernel "
            "selection and memory allocation; use --warmup 3 or more for numbers you can trust"
        )
    if iters < MIN_TRUSTED_ITERS:
        notes.append(
            f"--iters {iters} is below {MIN_TRUSTED_ITERS}: median and p90 of so few steps are "
            "noisy; use --iters 10 or more for numbers you can trust"
        )
    return notes


def busy_warning(device: str) -> str | None:
    """A note when other processes keep the CPU busy (1-minute load above half the cores):
    they stall multi-threaded kernels, so CPU latencies come out slower and noisier."""
    if not device.startswith("cpu") or not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], available_cpus()
    if load <= cores / 2:
        return None
    return (
        f"the CPU is busy (load average {load:.1f} on {cores} cores): latencies will be slower "
        "and noisier than on an idle machine; stop other jobs for numbers you can publish"
    )


@dataclass(frozen=True)
class Stats:
    """Median and 90th percentile of a list of durations, in milliseconds."""

    median: float
    p90: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        return cls(median=float(statistics.median(ms)), p90=float(np.percentile(ms, 90)))


@dataclass
class BenchResult:
    """One (variant, input size) measurement. Latencies are per batch; FPS is images/s."""

    variant: str
    size: int  # requested short side
    input_hw: tuple[int, int]  # padded network input (H, W)
    device: str
    dtype: str
    batch: int
    threads: int
    warmup: int
    iters: int
    params: int
    gflops: float  # forward pass at input_hw, one image; multiply and add counted separately
    model_ms: Stats
    post_ms: Stats
    total_ms: Stats  # statistics of per-step (model + post) sums, not sums of statistics
    detections: float  # mean detections per image (post-processing cost depends on it)
    ap: float | None = None  # mask AP (0-100) when a dataset was evaluated

    @property
    def fps(self) -> float:
        """Images per second at the median step latency."""
        return self.batch * 1000.0 / self.total_ms.median

    def to_dict(self) -> dict:
        out = asdict(self)
        out["input_hw"] = list(self.input_hw)
        out["fps"] = self.fps
        return out


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_like_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ops that compute a convolution (input, weight, ... first): those of the conv."""
    return conv_flop_count(list(x_shape), list(w_shape), list(out_shape), transposed=False)


def _custom_flop_formulas() -> dict:
    # NNPACK's Winograd conv does fewer multiplications, but GFLOPs are those of the model.
    formulas = {torch.ops.aten._nnpack_spatial_convolution: _conv_like_flop}
    try:
        formulas[torch.ops.torchvision.deform_conv2d] = _conv_like_flop
    except (AttributeError, RuntimeError):  # torchvision ops not loaded
        pass
    return formulas


@torch.inference_mode()
def count_gflops(model: torch.nn.Module, images: torch.Tensor) -> float:
    """GFLOPs of one forward pass on `images` [B, 3, H, W], per image (fp32, no autocast).

    torch.utils.flop_counter counts a multiply-add as 2 FLOPs (convolutions, matmuls, the
    deformable convolutions); element-wise ops are not counted.
    """
    with FlopCounterMode(display=False, custom_mapping=_custom_flop_formulas()) as counter:
        model(images)
    return counter.get_total_flops() / 1e9 / images.shape[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    predictor: Predictor,
    batch: ImageBatch,
    *,
    warmup: int,
    iters: int,
    on_progress: ProgressFn | None = None,
) -> tuple[list[float], list[float], list[int]]:
    """Run warm-up then timed forward + post-processing steps on a prepared batch.

    Returns per timed step: model seconds, post-processing seconds, detections in the batch.
    """
    device = predictor.device
    images = ImageBatch(batch.images.to(device), batch.image_sizes, batch.orig_sizes)
    model_s, post_s, dets = [], [], []
    total = warmup + iters
    for step in range(total):
        _sync(device)
        t0 = time.perf_counter()
        outputs = predictor.forward(images)
        _sync(device)
        t1 = time.perf_counter()
        instances = predictor.postprocess(outputs, images)
        _sync(device)
        t2 = time.perf_counter()
        if step >= warmup:
            model_s.append(t1 - t0)
            post_s.append(t2 - t1)
            dets.append(sum(len(i) for i in instances))
        if on_progress is not None:
            on_progress(step + 1, total)
    return model_s, post_s, dets


@dataclass(frozen=True)
class BenchSettings:
    """How to measure: one setting for every variant and size of a run."""

    device: str = "cpu"
    dtype: str = "fp32"
    batch: int = 1
    warmup: int = 5
    iters: int = 20
    max_size: int | None = None  # long-side limit; the config's when None
    threads: int | None = None  # torch intra-op threads; all available cores when None


def benchmark(
    loaded: LoadedModel,
    image: np.ndarray,
    *,
    variant: str,
    size: int,
    settings: BenchSettings,
    on_progress: ProgressFn | None = None,
) -> BenchResult:
    """Measure one model at one short-side `size` on `image` (uint8 RGB [H, W, 3]).

    The image is resized once (not timed) and repeated `settings.batch` times.
    """
    exported = not isinstance(loaded.model, torch.nn.Module)  # an ONNX Runtime session
    if exported and settings.dtype != "fp32":
        raise UserError(f"{variant}: an exported .onnx model runs as exported (fp32); "
                        "use --dtype fp32, or the .pth checkpoint for bf16/fp16")
    threads = settings.threads or available_cpus()
    torch.set_num_threads(threads)
    # Parameters and GFLOPs are the architecture's, counted in fp32 on the network as built (an
    # exported model's on the network its config builds), not on the predictor's rewritten copy.
    network = build_model(loaded.config.model).eval() if exported else loaded.model
    predictor = Predictor(
        None, loaded=loaded, device=settings.device, dtype=settings.dtype,
        min_size=size, max_size=settings.max_size,
    )
    batch = predictor.prepare([image] * settings.batch)
    gflops = count_gflops(network, batch.images[:1].to(next(network.parameters()).device))
    model_s, post_s, dets = time_steps(
        predictor, batch, warmup=settings.warmup, iters=settings.iters, on_progress=on_progress
    )
    totals = [m + p for m, p in zip(model_s, post_s)]
    return BenchResult(
        variant=variant,
        size=size,
        input_hw=tuple(int(s) for s in batch.images.shape[-2:]),
        device=str(predictor.device),
        dtype=_precision(loaded) if exported else settings.dtype,
        batch=settings.batch,
        threads=threads,
        warmup=settings.warmup,
        iters=settings.iters,
        params=count_params(network),  # as built; inference folding adds conv biases
        gflops=gflops,
        model_ms=Stats.of(model_s),
        post_ms=Stats.of(post_s),
        total_ms=Stats.of(totals),
        detections=float(np.mean(dets)) / settings.batch,
    )


def _precision(loaded: LoadedModel) -> str:
    """An exported model's precision as `sparseinst export` recorded it: fp32, fp16 or int8."""
    return str(getattr(loaded.model, "metadata", {}).get("precision", "fp32"))


def environment() -> dict[str, str]:
    """Versions and machine, to publish beside the numbers."""
    import platform

    import torchvision

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = {
        "cpu": f"{cpu} ({available_cpus()} cores available)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        # Chosen per command before torch loads (runtime.set_spin_count); it moves CPU timings.
        "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", "libgomp default"),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env
