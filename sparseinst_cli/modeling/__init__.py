"""The SparseInst network: backbone -> instance context encoder -> IAM decoder."""

from .build import build_model
from .sparseinst import SparseInst

__all__ = ["SparseInst", "build_model"]
