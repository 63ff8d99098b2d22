"""Train batches as a pure function of (seed, epoch, position), so a killed run resumes exactly.

Lightning's default shuffling draws the permutation and the workers' base seed from the global RNG
when an epoch's iterator is created, and each worker's augmentations then follow that worker's own
RNG stream; neither can be replayed from the middle of an epoch. Here the permutation comes from a
generator seeded by (seed, epoch), every sample's augmentation from its own seed (seed, epoch,
position), and the loader counts the batches it delivered: a resumed loader starts at the first
batch the killed run had not trained on, without decoding the ones before it. The batches also no
longer depend on ``num_workers``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ssl_bench.data.sharding import rank_and_world

_MASK = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (SplitMix64 steps): unrelated streams for neighbouring inputs."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = ((h ^ (int(v) & _MASK)) + 0x9E3779B97F4A7C15) & _MASK
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
        h ^= h >> 31
    return h >> 1


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (dataset index, sample seed) for one rank; each ``iter()`` serves the next epoch.

    Under DDP the epoch's permutation is padded by wrapping (as DistributedSampler does) and split
    strided across ranks, so every rank takes the same number of steps.

    Attributes:
        epoch: the epoch the next ``iter()`` serves; skip: batches of it to leave out (resume).
    """

    def __init__(self, num_samples: int, batch_size: int, drop_last: bool, seed: int, shuffle: bool = True) -> None:
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"EpochBatchSampler: {num_samples} samples, batch size {batch_size}")
        self.num_samples, self.batch_size, self.drop_last = num_samples, batch_size, drop_last
        self.seed, self.shuffle = seed, shuffle
        self.epoch = self.skip = 0

    def _per_rank(self) -> int:
        return math.ceil(self.num_samples / rank_and_world()[1])

    def __len__(self) -> int:
        n = self._per_rank()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, skip = self.epoch, self.skip
        self.epoch, self.skip = epoch + 1, 0
        rank, world = rank_and_world()
        n = self.num_samples
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))
        else:
            order = torch.arange(n)
        padded = order.repeat(math.ceil(self._per_rank() * world / n))[:self._per_rank() * world]
        positions = torch.arange(rank, len(padded), world)
        mine = padded[positions].tolist()
        for b in range(skip, len(self)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield [(i, mix_seed(self.seed, epoch, p)) for i, p in zip(mine[sl], positions[sl].tolist())]


class SeededDataset(Dataset):
    """``ds[(index, seed)]`` = ``ds[index]`` with the global CPU generator seeded by ``seed``
    meanwhile (the torchvision transforms draw from it), and put back afterwards."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        # the CPU generator only (torchvision's transforms draw from it): torch.manual_seed and
        # fork_rng also visit every accelerator backend and cost ~60 us a sample, this ~2 us
        gen = torch.default_generator
        state = gen.get_state()
        gen.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            gen.set_state(state)

    def __getitems__(self, items: list[tuple[int, int]]) -> Any:
        inner = getattr(self.dataset, "__getitems__", None)
        if inner is not None:  # a batched reader (the decoded cache): its crops come later, on the
            batch = inner([index for index, _ in items])  # accelerator, from these per-sample seeds
            if isinstance(batch, dict) and "index" in batch:  # the reader may reorder and skip
                seed_of = dict(items)
                batch["seeds"] = torch.tensor([seed_of[i] for i in batch["index"].tolist()], dtype=torch.int64)
            return batch
        return [self[item] for item in items]


class ResumableLoader(DataLoader):
    """A DataLoader over an :class:`EpochBatchSampler` that knows where it is: ``progress`` =
    [epoch, batches delivered in it], which the datamodule stores in every checkpoint."""

    def __init__(self, dataset: Dataset, batch_sampler: EpochBatchSampler, **kwargs: Any) -> None:
        # the loader's own generator: creating an iterator no longer draws from the global RNG
        super().__init__(SeededDataset(dataset), batch_sampler=batch_sampler,
                         generator=torch.Generator().manual_seed(batch_sampler.seed), **kwargs)
        self.progress = [batch_sampler.epoch, batch_sampler.skip]

    def __iter__(self) -> Iterator[Any]:
        sampler = self.batch_sampler
        self.progress = [sampler.epoch, sampler.skip]
        for batch in super().__iter__():
            self.progress[1] += 1
            yield batch

    def resume_at(self, epoch: int, batches: int) -> None:
        """Serve ``epoch`` next, from its batch ``batches`` (the next epoch when that one was complete)."""
        if batches >= len(self):
            epoch, batches = epoch + 1, 0
        self.batch_sampler.epoch, self.batch_sampler.skip = epoch, batches
        self.progress = [epoch, batches]
