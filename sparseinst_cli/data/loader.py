"""Data loaders: an infinite, seeded, resumable, rank-sharded training stream.

How the order is fixed: the training run is one endless stream of *global samples*
g = 0, 1, 2, ...; iteration i consumes g in [i * B * W, (i + 1) * B * W) (B images per rank,
W ranks) and rank r takes the r-th block of B. Sample g is image `perm_e[g % N]` where
e = g // N is its epoch and perm_e a permutation of the N images drawn from (seed, e). Its
augmentation RNG is seeded by (seed, g) (see CocoTrainDataset). Everything about iteration i is
therefore a function of (seed, i, rank, world size): resuming with `start_iter=k` gives the
same batches as an uninterrupted run from iteration k on, whatever `num_workers` is.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

PERM_STREAM = 0  # seed-sequence tag of the epoch permutations


def collate(batch: list[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    """[(image, target), ...] -> ([images], [targets]); images keep their own sizes."""
    images, targets = zip(*batch, strict=True) if batch else ((), ())
    return list(images), list(targets)


def collate_list(batch: list[Any]) -> list[Any]:
    """Keep a batch as a plain list (evaluation samples)."""
    return list(batch)


class TrainSampler(Sampler[tuple[int, int]]):
    """Yields (dataset index, global sample index) for one rank, forever, from `start_iter`."""

    def __init__(
        self, size: int, *, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
        start_iter: int = 0, shuffle: bool = True,
    ) -> None:
        if size <= 0:
            raise ValueError("the training set is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.start_iter = rank, world_size, start_iter
        self.shuffle = shuffle
        self._epoch, self._perm = -1, np.arange(size)

    def index_of(self, sample: int) -> int:
        """Dataset index of global sample `sample`."""
        epoch, pos = divmod(sample, self.size)
        if not self.shuffle:
            return pos
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, PERM_STREAM, epoch])
            self._epoch, self._perm = epoch, rng.permutation(self.size)
        return int(self._perm[pos])

    def samples_of(self, iteration: int) -> list[int]:
        """Global sample indices this rank reads at `iteration`."""
        first = (iteration * self.world_size + self.rank) * self.batch_size
        return list(range(first, first + self.batch_size))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        iteration = self.start_iter
        while True:
            for g in self.samples_of(iteration):
                yield self.index_of(g), g
            iteration += 1


def _seed_worker(worker_id: int) -> None:
    """Seed the global RNGs of a worker from its torch seed (sample RNGs are seeded per sample)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_train_loader(
    dataset: Dataset, *, batch_size: int, num_workers: int, seed: int, rank: int = 0,
    world_size: int = 1, start_iter: int = 0, pin_memory: bool = False,
) -> DataLoader:
    """Endless loader of this rank's (images, targets) batches, starting at `start_iter`.

    `batch_size` is per rank (the global batch is batch_size * world_size). The dataset must
    accept (index, global sample index) keys, as CocoTrainDataset does.
    """
    sampler = TrainSampler(
        len(dataset), batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
        start_iter=start_iter,
    )
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=collate, worker_init_fn=_seed_worker, pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed), persistent_workers=num_workers > 0,
    )


class ShardSampler(Sampler[int]):
    """Indices rank::world_size of a finite dataset, in order (evaluation)."""

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, size, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def build_eval_loader(
    dataset: Dataset, *, batch_size: int = 1, num_workers: int = 0, rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Loader of lists of EvalSample over this rank's share of the images, in order."""
    return DataLoader(
        dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank=rank,
                                                             world_size=world_size),
        num_workers=num_workers, collate_fn=collate_list,
    )
