"""Data loaders of the VOC tasks that shard themselves under DDP, without padding.

Lightning's ``DistributedSampler`` pads the test set with repeated images so that every rank takes the
same number of steps, and those images are then scored twice. The loaders here split each global batch
(the batch one process would see) strided across ranks (``ssl_bench.data.sharding``): every test image
is scored exactly once, and a training step on N ranks sees the same images as one process would.
The trainer is built with ``use_distributed_sampler=False``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from ssl_bench.data.sharding import ShardedBatchSampler

__all__ = ["sharded_loader"]


def sharded_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, collate_fn: Callable[..., Any],
                   num_workers: int = 0, drop_last: bool = False) -> DataLoader:
    """A loader of ``dataset`` whose global batches (seeded when shuffled, so every rank draws the same
    ones) are split strided across DDP ranks; one process gets the global batches themselves."""
    base = (RandomSampler(dataset, generator=torch.Generator().manual_seed(int(seed))) if shuffle
            else SequentialSampler(dataset))
    sampler = ShardedBatchSampler(BatchSampler(base, int(batch_size), drop_last=drop_last))
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_fn,
                      persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())
