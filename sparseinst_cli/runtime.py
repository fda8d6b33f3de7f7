"""Devices, precisions and threads: one place that checks what the machine can do."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os

import torch

from .errors import UserError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' -> torch.device, or a UserError when it is not there."""
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
    allocation: about 34,000 page faults (~60 ms, 8%) per R-50 G-IAM forward pass at 640 on a
    CPU. Kept, repeated inference runs without page faults; the price is that the process keeps
    its peak memory. Once per process; False where there is no glibc (macOS, Windows, musl).
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


def check_process_count(gpus: int, device_type: str) -> None:
    """`--gpus N` starts N processes: one per GPU on CUDA, N CPU processes without CUDA."""
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
    if name not in DTYPES:
        raise UserError(f"unknown dtype '{name}'; use one of {', '.join(DTYPES)}")
    dtype = DTYPES[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise UserError("fp16 is for CUDA; on a CPU use --dtype bf16 or fp32")
    return dtype


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for reduced dtypes; a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
