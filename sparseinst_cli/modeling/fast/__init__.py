"""The CPU inference fast path: BatchNorm folding, Winograd and NNPACK 3x3 convolutions, merged
first convolutions; `optimize_for_inference` applies them without changing the outputs."""
