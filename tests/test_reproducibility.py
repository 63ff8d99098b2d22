"""Reproducibility on CPU: the same seed gives identical probe and pretraining results."""

from __future__ import annotations

import json

import torch

from conftest import tiny_overrides


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
        states.append(torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
