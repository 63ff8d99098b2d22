"""Reproducibility on CPU: the same seed gives identical probe and pretraining results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import tiny_overrides


def metrics(out) -> dict:
    return json.loads((out / "results.json").read_text())["metrics"]


def test_same_seed_gives_identical_probe_metrics(tiny_data, tmp_path, run_cli):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert run_cli("probe", "init=gaussian", "backbone.input_space=rgb", "backbone.widths=[16,32,48,48,32]",
                       "backbone.fc_channels=64", f"data.root={tiny_data}", "data.synthetic=null",
                       "data.num_workers=0", "probe.epochs=2", "probe.layers=[conv1,conv3]",
                       "trainer.deterministic=true", f"paths.cache_dir={tmp_path / name / 'cache'}",
                       f"hydra.run.dir={out}", "trainer.enable_progress_bar=false") == 0
        runs.append(metrics(out))
    keys = [k for k in runs[0] if k.endswith(("/top1", "/top5"))]
    assert keys and all(runs[0][k] == runs[1][k] for k in keys)


def test_same_seed_gives_identical_pretraining(tiny_data, tmp_path, run_cli):
    # the second run reads the ab prior from the cache the first one wrote: preparation must not
    # shift the training RNG (pretrain re-seeds before fitting)
    states = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert run_cli("pretrain", *tiny_overrides(tiny_data, out, tmp_path / "cache"), "init=gaussian",
                       "trainer.deterministic=true") == 0
        states.append(
            torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def _pretrain_cmd(data, out, cache, workers: int, decoded: str) -> list[str]:
    args = [a for a in tiny_overrides(data, out, cache) if not a.startswith(("data.num_workers", "trainer.max_epochs"))]
    return [sys.executable, "-m", "ssl_bench.cli", "pretrain", *args, f"data.num_workers={workers}",
            "trainer.max_epochs=3", "trainer.deterministic=true", "init=gaussian", "callbacks.samples.every_n_steps=0",
            f"data.decoded_cache={decoded}"]


def _step_of(path) -> int:
    return int(path.stem[4:]) if path.stem.startswith("step") and path.stem[4:].isdigit() else -1


ENV = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    """The never-interrupted run, per data path (JPEG files, or the decoded cache)."""
    runs = {}

    def run(path: str):
        if path not in runs:
            whole = tmp_path_factory.mktemp("whole") / "run"
            decoded = "null" if path == "files" else str(whole.parent / "decoded")
            subprocess.run(_pretrain_cmd(tiny_data, whole, whole.parent / "cache", 0, decoded), env=ENV,
                           check=True, capture_output=True, timeout=600)
            runs[path] = whole
        return runs[path]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("sig,path", [(signal.SIGKILL, "files"), (signal.SIGTERM, "cache")])
def test_killed_run_resumes_to_the_uninterrupted_result(sig, path, tiny_data, uninterrupted, tmp_path):
    """Kill a pretraining in the middle of an epoch, run the same command again: the final weights,
    batch-norm statistics and metrics equal those of a run that was never interrupted. The resumed
    run uses another number of loader workers: batches depend on (seed, epoch, position) only."""
    env, whole, cut = ENV, uninterrupted(path), tmp_path / "cut"
    decoded = "null" if path == "files" else str(tmp_path / "decoded")
    proc = subprocess.Popen(_pretrain_cmd(tiny_data, cut, tmp_path / "c2", 0, decoded), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while max((_step_of(p) for p in (cut / "checkpoints").glob("step*.ckpt")), default=-1) < 7:  # epoch 2 of 3
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    assert not (cut / "results.json").exists(), "killed before the end"
    killed_at = torch.load(cut / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert 5 < killed_at < 15, killed_at  # in epoch 2 or 3 of 3 (5 steps each)
    subprocess.run(_pretrain_cmd(tiny_data, cut, tmp_path / "c2", 1, decoded), env=env, check=True,
                   capture_output=True, timeout=600)
    a = torch.load(whole / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(cut / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 15
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    ma, mb = metrics(whole), metrics(cut)
    assert {k: ma[k] for k in ma if "images_per_s" not in k} == {k: mb[k] for k in mb if "images_per_s" not in k}
