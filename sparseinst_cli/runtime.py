"""Devices, precisions and threads: one place that checks what the machine can do.

Owns the precision names (`--dtype` for inference, `solver.amp` / `--amp` for training), the
device, process-count and CPU-feature checks, the glibc allocator setting and the OpenMP spin
count. torch is imported inside the functions that use it: the CLI entry point calls
`set_spin_count` before torch loads, which is when libgomp reads GOMP_SPINCOUNT.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("fp32", "fp16", "bf16")  # inference: --dtype
AMP_MODES = ("none", "fp16", "bf16", "auto")  # training: solver.amp / --amp
REDUCED_PRECISIONS = ("bf16", "fp16")


def torch_dtype(name: str) -> torch.dtype:
    """A precision name (a --dtype, or an AMP mode other than auto; none is fp32) -> torch dtype."""
    import torch

    return {"fp32": torch.float32, "none": torch.float32, "fp16": torch.float16,
            "bf16": torch.bfloat16}[name]


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' -> torch.device, or a UserError when it is not there."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                "--device cuda was asked for, but no CUDA GPU is available; use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) present")
    elif device.type != "cpu":
        raise UserError(f"unsupported device '{name}'; use cpu or cuda")
    return device


def available_cpus() -> int:
    """CPU cores this process may run on (the affinity mask, not the host's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# glibc's mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit systems


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks of up to 32 MB for reuse instead of returning them to the OS.

    By default it hands large freed blocks back and faults them in again, zeroed, on the next
    allocation: tens of thousands of page faults per forward pass of a large model on a CPU.
    Kept, repeated inference runs without page faults; the price is that the process keeps its
    peak memory. Once per process; False where there is no glibc (macOS, Windows, musl).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The trim threshold must be an int: 2 GB of free heap top is kept before trimming.
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    )


def release_freed_memory() -> None:
    """Hand the heap's free memory back to the OS (glibc's malloc_trim), so that a peak
    measured next is the next job's own; a no-op without glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def check_process_count(gpus: int, device_type: str) -> None:
    """`--gpus N` starts N processes: one per GPU on CUDA, N CPU processes without CUDA."""
    import torch

    if gpus < 1:
        raise UserError(f"--gpus {gpus} must be at least 1")
    if device_type == "cuda":
        count = torch.cuda.device_count()
        if gpus > count:
            raise UserError(f"--gpus {gpus} but {count} GPU(s) are visible; use --gpus {count}")
        return
    cores = available_cpus()
    if gpus > cores:
        raise UserError(
            f"--gpus {gpus} without a CUDA GPU means {gpus} CPU processes, but this machine has "
            f"{cores} core(s); use --gpus {cores} or fewer, or --device cuda on a GPU machine"
        )


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    import torch

    if name not in DTYPE_NAMES:
        raise UserError(f"unknown dtype '{name}'; use one of {', '.join(DTYPE_NAMES)}")
    dtype = torch_dtype(name)
    if dtype == torch.float16 and device.type == "cpu":
        raise UserError("fp16 is for CUDA; on a CPU use --dtype bf16 or fp32")
    return dtype


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for reduced dtypes; a no-op for fp32."""
    import torch

    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX in /proc/cpuinfo (Linux); elsewhere assume not."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


# --------------------------------------------------------------------------- OpenMP spin count


def requested_dtypes(argv: list[str]) -> list[str]:
    """The values of every `--dtype X` / `--dtype=X` in `argv`."""
    values = []
    for i, arg in enumerate(argv):
        if arg == "--dtype" and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith("--dtype="):
            values.append(arg.partition("=")[2])
    return values


def only_reduced_precision(argv: list[str]) -> bool:
    """Whether `argv` asks for bf16 / fp16 and nothing else (`bench --dtype fp32 --dtype bf16`
    is mixed: fp32 has the larger loss from long spins)."""
    dtypes = requested_dtypes(argv)
    return bool(dtypes) and all(d in REDUCED_PRECISIONS for d in dtypes)


def set_spin_count(argv: list[str]) -> None:
    """Short spins (1000) unless only reduced precision is asked for; a GOMP_SPINCOUNT of yours
    wins.

    After every parallel op libgomp's idle threads spin for milliseconds by default, taking the
    cores from NNPACK's threads (fp32 3x3 convs), from data-loading workers and from anything
    else running, so fp32 is faster with short spins. bf16 runs oneDNN and Winograd matmuls
    only, hundreds of short ops, where the default spin saves a thread wake-up per op. The
    README's Performance section has the figures.
    """
    if not only_reduced_precision(argv):
        os.environ.setdefault("GOMP_SPINCOUNT", "1000")
