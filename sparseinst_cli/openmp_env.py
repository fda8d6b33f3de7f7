"""How long idle OpenMP threads spin: libgomp reads it once, when torch loads, so it is chosen
here from the command line, before torch is imported and before arguments are parsed."""

from __future__ import annotations

import os

REDUCED_PRECISIONS = ("bf16", "fp16")


def asks_for_reduced_precision(argv: list[str]) -> bool:
    """Whether `argv` has `--dtype bf16` / `--dtype=fp16` (any command)."""
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--dtype" and i + 1 < len(argv) else arg.partition("=")[2]
        if (arg == "--dtype" or arg.startswith("--dtype=")) and value in REDUCED_PRECISIONS:
            return True
    return False


def set_spin_count(argv: list[str]) -> None:
    """Short spins (1000) unless reduced precision is asked for; a GOMP_SPINCOUNT of yours wins.

    After every parallel op libgomp's idle threads spin for milliseconds by default, taking the
    cores from NNPACK's threads (fp32 3x3 convs), from data-loading workers and from anything
    else running: R-50 G-IAM at 640 in fp32 takes 750 ms with the default, 680 with 1000. bf16
    runs oneDNN and Winograd matmuls only, hundreds of short ops, where the default spin saves a
    thread wake-up per op: 430 ms against 460-510 with 1000 (2-core Zen 4).
    """
    if not asks_for_reduced_precision(argv):
        os.environ.setdefault("GOMP_SPINCOUNT", "1000")
