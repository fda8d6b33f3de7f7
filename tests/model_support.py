"""Checks shared by the model tests."""
from __future__ import annotations

import torch
from torch import nn


def assert_batch_independent(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """A batch gives each image the outputs it gets alone; returns the batched outputs."""
    with torch.no_grad():
        batched = model(images)
        single = [model(images[i : i + 1]) for i in range(images.shape[0])]
    for key, value in batched.items():
        torch.testing.assert_close(value, torch.cat([s[key] for s in single]), atol=1e-4,
                                   rtol=1e-4)
    return batched
