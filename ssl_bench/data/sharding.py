"""Evaluation-exact data sharding for DDP: every sample seen exactly once per epoch.

Lightning's default ``DistributedSampler`` pads the last shard with repeated samples so that all
ranks take the same number of steps; metrics then count those samples twice. Here each global batch
(the batch one process would see) is split strided across ranks, ``batch[rank::world]``: no
padding, no drop, every rank takes the same number of steps (a rank may get an empty part of the
final batch), and the union of the parts is exactly the one-process batch. Rank and world size are
read when iteration starts, so the loaders can be built before the process group exists (Lightning
starts DDP inside ``trainer.fit``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch.distributed as dist
from torch.utils.data import BatchSampler, RandomSampler, Sampler


def rank_and_world() -> tuple[int, int]:
    """(global rank, world size) of the initialised process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's strided part of each batch of ``batch_sampler``.

    The wrapped sampler must give the same batches on every rank: sequential, or random with an
    explicit seeded generator (a generator-less RandomSampler draws from each process's global RNG).
    """

    def __init__(self, batch_sampler: BatchSampler) -> None:
        self.batch_sampler = batch_sampler
        inner = getattr(batch_sampler, "sampler", None)
        self._seeded = not isinstance(inner, RandomSampler) or inner.generator is not None

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[int]]:
        rank, world = rank_and_world()
        if world > 1 and not self._seeded:
            raise ValueError("ShardedBatchSampler under DDP needs a RandomSampler with a seeded generator, "
                             "so that every rank draws the same global batches")
        for batch in self.batch_sampler:
            yield list(batch)[rank::world]
