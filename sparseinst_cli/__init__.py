"""SparseInst command-line tool suite."""
__version__ = "0.1.0"
