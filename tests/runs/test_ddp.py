"""DDP on CPU (gloo): a probe on two processes equals the one-process probe, every sample counted once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

from ssl_bench.data import sharding
from ssl_bench.data.sharding import ShardedBatchSampler


def shards(make, world: int, monkeypatch) -> list[list[list[int]]]:
    """Each rank's batches, as the rank (its own process, its own sampler) would iterate them."""
    out = []
    for rank in range(world):
        monkeypatch.setattr(sharding, "rank_and_world", lambda r=rank: (r, world))
        out.append(list(ShardedBatchSampler(make())))
    return out


@pytest.mark.parametrize("n,bs,world", [(50, 16, 2), (7, 4, 3), (3, 2, 4)])
def test_shards_partition_every_one_process_batch(n, bs, world, monkeypatch):
    one = list(BatchSampler(SequentialSampler(range(n)), bs, drop_last=False))
    parts = shards(lambda: BatchSampler(SequentialSampler(range(n)), bs, drop_last=False), world, monkeypatch)
    assert all(len(p) == len(one) for p in parts), "every rank takes the same number of steps"
    for i, batch in enumerate(one):
        got = sorted(j for p in parts for j in p[i])
        assert got == batch, "no padding, no drop: the union of the parts is the one-process batch"


def test_seeded_random_batches_agree_across_ranks_and_unseeded_is_refused(monkeypatch):
    def make():
        return BatchSampler(RandomSampler(range(20), generator=torch.Generator().manual_seed(5)), 6, False)

    one = list(make())
    a, b = shards(make, 2, monkeypatch)
    assert [sorted(x + y) for x, y in zip(a, b)] == [sorted(x) for x in one]
    unseeded = BatchSampler(RandomSampler(range(20)), 6, False)
    monkeypatch.setattr(sharding, "rank_and_world", lambda: (0, 2))
    with pytest.raises(ValueError, match="seeded generator"):
        list(ShardedBatchSampler(unseeded))


def run_probe(data: Path, out: Path, cache: Path, *extra: str) -> dict:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    cmd = [sys.executable, "-m", "ssl_bench.cli", "probe", "init=gaussian", "backbone.in_channels=3",
           "backbone.input_space=rgb", "backbone.widths=[16,32,48,48,32]", "backbone.fc_channels=64",
           f"data.root={data}", "data.synthetic=null", "data.num_workers=0", "probe.epochs=3",
           "probe.batch_size=16", f"paths.cache_dir={cache}", f"paths.log_dir={out.parent}",
           f"hydra.run.dir={out}", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
           "trainer.enable_model_summary=false", *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_probe_on_two_gloo_processes_equals_one_process(tmp_path):
    from ssl_bench.data.synthetic import SyntheticSpec, generate
    # 100 train (90 fit + 10 holdout) and 50 val images: batches of 16 leave uneven last parts
    data = generate(tmp_path / "data", SyntheticSpec(num_classes=10, train_per_class=10, val_per_class=5,
                                                     image_size=64, seed=3), workers=1)
    one = run_probe(data, tmp_path / "one", tmp_path / "cache1")
    two = run_probe(data, tmp_path / "two", tmp_path / "cache2", "trainer.devices=2", "trainer.strategy=ddp")
    assert two["config"]["trainer"]["devices"] == 2 and (tmp_path / "two" / "train_ddp_process_1.log").exists()
    assert two["all_heads"] == one["all_heads"], "same heads, same accuracy, on every layer and lr"
    assert two["metrics"] == one["metrics"]
    # the trained weights themselves: batch-norm statistics in float64 on both paths, so the two
    # runs differ by float32 rounding of the summed gradients only
    import torch
    h1, h2 = (torch.load(tmp_path / run / "heads.pt", map_location="cpu") for run in ("one", "two"))
    assert sorted(h1) == sorted(h2) and any(k.endswith("1.weight") for k in h1)
    diff = max((h1[k].double() - h2[k].double()).abs().max().item() for k in h1)
    scale = max(h1[k].double().abs().max().item() for k in h1 if k.endswith("1.weight"))
    print(f"probe DDP: max |head(1 process) - head(2 processes)| = {diff:.3g} (largest weight {scale:.3g})")
    assert diff <= 1e-5 * scale, diff
    # nothing counted twice (a padded sampler would count 52 test images): every accuracy is k/50
    for k, v in two["all_heads"].items():
        n = 50 if "/test/" in k else 10
        assert Fraction(round(v * n / 100, 4)).denominator == 1, (k, v)


@pytest.mark.slow
def test_pretraining_on_two_gloo_processes(tiny_data, tmp_path):
    """DDP pretraining: data.batch_size is the global batch (each of the 2 ranks loads half of it), each
    rank takes its half of every epoch (the datamodule shards, Lightning's sampler is off), one rank
    writes results and samples; a global batch that does not divide is refused naming the key."""
    from helpers import tiny_overrides
    out = tmp_path / "run"
    args = [a for a in tiny_overrides(tiny_data, out, tmp_path / "cache") if not a.startswith("trainer.max_epochs")]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    done = subprocess.run([sys.executable, "-m", "ssl_bench.cli", "pretrain", *args, "trainer.max_epochs=2",
                           "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    # 80 train images: 40 per rank; global batch 16 = 8 per rank -> 5 steps per epoch
    assert res["metrics"]["pretrain/steps"] == 10 and res["config"]["trainer"]["devices"] == 2
    assert (out / "samples" / "final.png").is_file() and (out / "train_ddp_process_1.log").exists()
    assert done.stdout.count("results written") == 1
    odd = subprocess.run([sys.executable, "-m", "ssl_bench.cli", "pretrain", *args, "data.batch_size=15",
                          f"hydra.run.dir={tmp_path}/odd", "trainer.accelerator=cpu", "trainer.devices=2",
                          "trainer.strategy=ddp"], env=env, capture_output=True, text=True, timeout=300)
    err = [line for line in odd.stderr.splitlines() if line.startswith("ssl-bench: error:")]
    assert odd.returncode == 2 and len(err) == 1 and "data.batch_size=15" in err[0] and "2 processes" in err[0]
    assert not (tmp_path / "odd" / "checkpoints").exists()
