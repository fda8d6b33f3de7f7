"""How long idle OpenMP threads spin: libgomp reads it once, when torch loads, so it is chosen
here from the command line, before torch is imported and before arguments are parsed."""

from __future__ import annotations

import os

REDUCED_PRECISIONS = ("bf16", "fp16")


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
    else running: R-50 G-IAM at 640 in fp32 takes 750 ms with the default, 680 with 1000. bf16
    runs oneDNN and Winograd matmuls only, hundreds of short ops, where the default spin saves a
    thread wake-up per op: 430 ms against 460-510 with 1000 (2-core Zen 4).
    """
    if not only_reduced_precision(argv):
        os.environ.setdefault("GOMP_SPINCOUNT", "1000")
