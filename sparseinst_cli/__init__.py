"""SparseInst command-line tool suite: the public Python API, imported lazily."""

from __future__ import annotations

__version__ = "0.1.0"

_API = {
    "Predictor": "predictor",
    "load_model": "loading",
    "build_model": "modeling",
    "load_config": "config",
    "Config": "config",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'sparseinst_cli' has no attribute '{name}'")
