"""Resumable train order: batches as a function of (seed, epoch, position)."""

from __future__ import annotations

import torch

from ssl_bench.data import sharding
from ssl_bench.data.decoded_cache import seeded_offsets
from ssl_bench.data.resumable import EpochBatchSampler, mix_seed


def epoch_batches(sampler: EpochBatchSampler, epoch: int, skip: int = 0) -> list:
    sampler.epoch, sampler.skip = epoch, skip
    return list(sampler)


def test_an_epoch_is_a_function_of_seed_and_epoch_and_resumes_at_any_batch():
    s = EpochBatchSampler(50, 8, drop_last=True, seed=3)
    first = epoch_batches(s, 2)
    assert len(first) == len(s) == 6 and all(len(b) == 8 for b in first)
    assert epoch_batches(EpochBatchSampler(50, 8, True, seed=3), 2) == first  # a fresh process agrees
    assert epoch_batches(s, 3) != first and epoch_batches(EpochBatchSampler(50, 8, True, seed=4), 2) != first
    for k in range(len(first) + 1):
        assert epoch_batches(s, 2, skip=k) == first[k:]
    indices = [i for b in first for i, _ in b]
    assert len(set(indices)) == 48  # a permutation (2 dropped with the last partial batch)
    seeds = [sd for b in first for _, sd in b]
    assert len(set(seeds)) == 48


def test_iter_moves_to_the_next_epoch():
    s = EpochBatchSampler(10, 4, drop_last=False, seed=0)
    a, b = list(s), list(s)
    assert s.epoch == 2 and a == epoch_batches(EpochBatchSampler(10, 4, False, 0), 0)
    assert b == epoch_batches(EpochBatchSampler(10, 4, False, 0), 1)


def test_ranks_split_the_padded_epoch(monkeypatch):
    parts = []
    for rank in range(3):
        monkeypatch.setattr(sharding, "rank_and_world", lambda r=rank: (r, 3))
        monkeypatch.setattr("ssl_bench.data.resumable.rank_and_world", lambda r=rank: (r, 3))
        parts.append(epoch_batches(EpochBatchSampler(10, 2, drop_last=False, seed=1), 0))
    assert all(len(p) == 2 for p in parts)  # ceil(10 / 3) = 4 samples per rank, 2 batches
    seen = [i for p in parts for b in p for i, _ in b]
    assert len(seen) == 12 and set(seen) == set(range(10))  # padded by wrapping: 2 repeats
    seeds = [sd for p in parts for b in p for _, sd in b]
    assert len(set(seeds)) == 12  # every position has its own augmentation seed


def test_seeded_offsets_cover_the_range_uniformly():
    seeds = torch.tensor([mix_seed(7, 0, p) for p in range(20000)])
    top, left, flip = seeded_offsets(seeds, 64, 60, 56)
    assert top.min() == 0 and top.max() == 8 and left.min() == 0 and left.max() == 4
    counts = torch.bincount(top, minlength=9).float()
    assert (counts / counts.mean() - 1).abs().max() < 0.1
    assert abs(flip.float().mean().item() - 0.5) < 0.02
    assert len(set(seeds.tolist())) == 20000 and all(0 <= s < 2**63 for s in seeds.tolist()[:100])
