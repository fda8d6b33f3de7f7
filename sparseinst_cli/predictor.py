"""The Python API every command uses: weights (+ config) -> model -> instances for images.

Loading the weights is `loading.load_model`; this module runs the loaded model on images.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .fileio import read_image_rgb
from .loading import LoadedModel, load_model
from .modeling import SparseInst
from .modeling.fast.inference import optimize_for_inference
from .postprocess import Instances, postprocess
from .preprocess import ImageBatch, prepare_images
from .runtime import autocast_context, keep_freed_memory, resolve_device, resolve_dtype


@dataclass
class Prediction:
    """Instances of one image plus the names of their labels."""

    instances: Instances
    class_names: list[str]

    @property
    def names(self) -> list[str]:
        return [self.class_names[int(i)] for i in self.instances.labels]


class Predictor:
    """`Predictor(weights, config).predict(image)` -> Prediction, the official pipeline end to end.

    image: a path or an RGB uint8 array [H, W, 3]. `optimize=False` keeps the network as
    loaded (no BN folding, no channels-last), e.g. to compare against the unfused model.
    """

    def __init__(
        self,
        weights: str | os.PathLike | None,
        config: str | os.PathLike | None = None,
        *,
        overrides: list[str] = (),
        device: str = "cpu",
        dtype: str = "fp32",
        min_size: int | None = None,
        max_size: int | None = None,
        cls_threshold: float | None = None,
        mask_threshold: float | None = None,
        max_detections: int | None = None,
        loaded: LoadedModel | None = None,
        optimize: bool = True,
    ):
        self.loaded = loaded or load_model(weights, config, overrides)
        cfg = self.loaded.config
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        model = self.loaded.model.to(self.device)
        if self.device.type == "cpu":
            keep_freed_memory()  # no page faults on the activations of every image
        # Folded BN, channels-last, (on a CPU) Winograd 3x3 convs and (reduced precision)
        # weights stored in the autocast dtype give the same outputs (checked) in less time.
        if optimize and isinstance(model, SparseInst):
            cpu = self.device.type == "cpu"
            model = optimize_for_inference(
                model, nnpack=cpu and self.dtype == torch.float32, winograd=cpu,
                autocast_dtype=self.dtype,
            )
        self.model = model.eval()
        self.min_size = min_size or cfg.input.min_size_test
        self.max_size = max_size or cfg.input.max_size_test
        self.cls_threshold = cfg.test.cls_threshold if cls_threshold is None else cls_threshold
        self.mask_threshold = cfg.test.mask_threshold if mask_threshold is None else mask_threshold
        self.max_detections = max_detections or cfg.test.max_detections

    @property
    def class_names(self) -> list[str]:
        return self.loaded.class_names

    def prepare(self, images: list[np.ndarray]) -> ImageBatch:
        return prepare_images(
            images,
            min_size=self.min_size,
            max_size=self.max_size,
            pixel_mean=self.loaded.config.model.pixel_mean,
        )

    @torch.inference_mode()
    def forward(self, batch: ImageBatch) -> dict[str, torch.Tensor]:
        images = batch.images.to(self.device)
        if isinstance(self.model, SparseInst):  # matches the channels-last weights
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(self.device, self.dtype):
            return self.model(images)

    @torch.inference_mode()
    def postprocess(
        self, outputs: dict[str, torch.Tensor], batch: ImageBatch, min_score: float = 0.0
    ) -> list[Instances]:
        """Instances per image; `min_score` drops those with a lower final score."""
        return [
            Instances(masks=i.masks.cpu(), scores=i.scores.cpu(), labels=i.labels.cpu())
            for i in postprocess(
                outputs,
                image_sizes=batch.image_sizes,
                orig_sizes=batch.orig_sizes,
                cls_threshold=self.cls_threshold,
                mask_threshold=self.mask_threshold,
                max_detections=self.max_detections,
                min_score=min_score,
            )
        ]

    def predict_batch(self, images: list[np.ndarray | str | Path]) -> list[Prediction]:
        arrays = [read_image_rgb(im) if isinstance(im, str | Path) else im for im in images]
        batch = self.prepare(arrays)
        outputs = self.forward(batch)
        return [Prediction(inst, self.class_names) for inst in self.postprocess(outputs, batch)]

    def predict(self, image: np.ndarray | str | Path) -> Prediction:
        return self.predict_batch([image])[0]

    def predict_many(
        self, images: Iterable[np.ndarray | str | Path], *, batch_size: int = 1,
        progress: bool | None = None,
    ) -> Iterator[Prediction]:
        """Predictions of `images` (paths or RGB arrays), in order, `batch_size` at a time.

        progress: a tqdm.auto bar on stderr (a widget in notebooks); None shows it when the
        session is interactive (a notebook, a Python prompt, or stderr on a terminal).
        """
        items = images if isinstance(images, list | tuple) else list(images)
        show = _interactive() if progress is None else progress
        from tqdm.auto import tqdm

        with tqdm(total=len(items), desc="predict", unit="img", disable=not show) as bar:
            for start in range(0, len(items), max(1, batch_size)):
                chunk = items[start : start + max(1, batch_size)]
                yield from self.predict_batch(list(chunk))
                bar.update(len(chunk))


def _interactive() -> bool:
    """A notebook, a Python prompt, or stderr on a terminal."""
    return "ipykernel" in sys.modules or hasattr(sys, "ps1") or sys.stderr.isatty()
