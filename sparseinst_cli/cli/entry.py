"""The `sparseinst` console entry point: the OpenMP spin count is chosen from the arguments here,
before the app (and with its commands torch, whose libgomp reads GOMP_SPINCOUNT once) is
imported. Importing the app itself reads no argv and sets nothing."""

from __future__ import annotations

import sys

from ..runtime import set_spin_count


def main() -> None:
    """`sparseinst ...`: set the spin count, then run the app with its error handler."""
    set_spin_count(sys.argv)
    from .app import main as run_app

    run_app()
