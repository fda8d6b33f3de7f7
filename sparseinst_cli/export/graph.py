"""Export-ready wrappers around SparseInst: dynamic adaptive pooling and the two output layouts.

Nothing here changes the PyTorch model that training and `predict` use: `export_ready` works on
a deep copy and swaps every `nn.AdaptiveAvgPool2d` for `DynamicAdaptiveAvgPool2d`, which gives
PyTorch's numbers but is built from plain ops (arange, integer division, comparisons, matmul),
so the pooling windows follow the input size in a traced graph. ONNX's own pooling ops cannot
express adaptive windows for a size unknown at export time, which is why the official export
fixed the input at 640x640.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..modeling.deform import DeformConv3x3
from ..postprocess import mask_quality

RAW_OUTPUTS = ("scores", "masks")
END_TO_END_OUTPUTS = ("scores", "labels", "keep", "masks")


def window_matrix(
    n: torch.Tensor | int, out: int, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """0/1 matrix [out, n] of PyTorch's adaptive pooling windows, and the window lengths [out].

    Window i covers [floor(i*n/out), ceil((i+1)*n/out)), as in ATen's adaptive_avg_pool2d.
    """
    idx = torch.arange(n, device=like.device)  # traced: follows the runtime size
    cells = torch.arange(out, device=like.device)
    start = torch.div(cells * n, out, rounding_mode="floor")
    end = torch.div((cells + 1) * n + out - 1, out, rounding_mode="floor")
    inside = (idx[None, :] >= start[:, None]) & (idx[None, :] < end[:, None])
    return inside.to(like.dtype), (end - start).to(like.dtype)


def adaptive_avg_pool2d(x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, oh, ow]: adaptive average pooling as window sums / window areas."""
    rows, row_len = window_matrix(x.shape[-2], out_hw[0], x)  # [oh, H], [oh]
    cols, col_len = window_matrix(x.shape[-1], out_hw[1], x)  # [ow, W], [ow]
    sums = rows @ x @ cols.transpose(0, 1)  # [B, C, oh, ow]
    return sums / (row_len[:, None] * col_len[None, :])


class DynamicAdaptiveAvgPool2d(nn.Module):
    """Drop-in for `nn.AdaptiveAvgPool2d(size)` that exports with dynamic height and width."""

    def __init__(self, output_size: int | tuple[int, int]):
        super().__init__()
        size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        if any(s is None for s in size):
            raise ValueError("DynamicAdaptiveAvgPool2d needs a fixed output size")
        self.output_size: tuple[int, int] = (int(size[0]), int(size[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C, *output_size]."""
        return adaptive_avg_pool2d(x, self.output_size)


def swap_adaptive_pools(model: nn.Module) -> int:
    """Replace every nn.AdaptiveAvgPool2d in `model` (in place); returns how many were swapped."""
    targets = [
        (name, m) for name, m in model.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, DynamicAdaptiveAvgPool2d(module.output_size))
    return len(targets)


class RawHead(nn.Module):
    """images [B,3,Hp,Wp] -> scores [B,N,K] = sqrt(sigmoid(cls) * sigmoid(obj)),
    masks [B,N,Hp/4,Wp/4] probabilities."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        scores = torch.sqrt(out["pred_logits"].sigmoid() * out["pred_scores"].sigmoid())
        return scores, out["pred_masks"].sigmoid()


class EndToEndHead(nn.Module):
    """images [B,3,Hp,Wp] -> per query (no sorting, no NMS, N = 100 queries):

    scores [B,N]: best class score times the mask quality (the official rescoring);
    labels [B,N] int64: contiguous class index 0..K-1;
    keep [B,N] bool: best class score before rescoring > `cls_threshold` (the official filter);
    masks [B,N,Hp/4,Wp/4]: probabilities; a pixel belongs to the instance where > `mask_threshold`
    after resizing to the image (resizing needs each image's size, so it stays outside the graph).
    """

    def __init__(self, model: nn.Module, *, cls_threshold: float, mask_threshold: float):
        super().__init__()
        self.model = model
        self.cls_threshold = float(cls_threshold)
        self.mask_threshold = float(mask_threshold)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        probs = torch.sqrt(out["pred_logits"].sigmoid() * out["pred_scores"].sigmoid())
        best, labels = probs.max(dim=-1)  # [B, N]
        masks = out["pred_masks"].sigmoid()  # [B, N, h, w]
        quality = mask_quality(masks.flatten(0, 1), self.mask_threshold).view_as(best)
        return best * quality, labels, best > self.cls_threshold, masks


class HalfPrecision(nn.Module):
    """Runs `head` in float16 between float32 images in and float32 (or integer) outputs out,
    so an fp16 export keeps the input format of the fp32 one."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head.half()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.head(images.half())
        return tuple(o.float() if o.is_floating_point() else o for o in outputs)


def has_deformable(model: nn.Module) -> bool:
    """True when the model holds deformable convs (exported as ONNX DeformConv)."""
    return any(isinstance(m, DeformConv3x3) for m in model.modules())


def export_ready(
    model: nn.Module,
    *,
    end_to_end: bool = False,
    half: bool = False,
    cls_threshold: float = 0.005,
    mask_threshold: float = 0.45,
) -> nn.Module:
    """A deep copy of `model` with dynamic pooling, wrapped in the chosen output layout, in eval.

    half: weights and activations in float16; images in and scores/masks out stay float32.
    """
    model = copy.deepcopy(model).eval()
    swap_adaptive_pools(model)
    if end_to_end:
        head: nn.Module = EndToEndHead(
            model, cls_threshold=cls_threshold, mask_threshold=mask_threshold
        )
    else:
        head = RawHead(model)
    return (HalfPrecision(head) if half else head).eval()
