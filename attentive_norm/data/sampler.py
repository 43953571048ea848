"""A resumable, distributed sampler whose items carry the epoch: ``(epoch, index)``.

Each process of a ``world_size`` job gets every ``world_size``-th index of the epoch's permutation
(seeded by ``seed + epoch``), so a global batch of B images is the same set of images whatever the
number of processes. Training drops the last partial global batch; evaluation keeps every image once
(the shards may then differ in size by one). ``set_epoch(epoch, start_batch)`` resumes mid-epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ShardSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` for this process's share of one epoch, from batch ``start_batch`` on."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        world_size: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        self.size = size
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

    def batches_per_epoch(self) -> int:
        """Batches per epoch for one process (training: the number of optimisation steps)."""
        if self.drop_last:
            return self.size // (self.batch_size * self.world_size)
        return -(-len(range(self.rank, self.size, self.world_size)) // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def _indices(self) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.size)
        if self.drop_last:
            order = order[: self.batches_per_epoch() * self.batch_size * self.world_size]
        return order[self.rank :: self.world_size][self.start_batch * self.batch_size :].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, i) for i in self._indices())

    def __len__(self) -> int:
        if self.drop_last:
            total = self.batches_per_epoch() * self.batch_size
        else:
            total = len(range(self.rank, self.size, self.world_size))
        return max(0, total - self.start_batch * self.batch_size)
