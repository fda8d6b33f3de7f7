"""The loops other than training: evaluate, benchmark, predict (and evaluation jobs over
processes); they report progress through callbacks. `distributed` (process groups) and `run_dir`
(numbered run folders) serve these loops and training alike.
"""
