"""Helpers shared by the tests (importable as ``helpers``: pytest's pythonpath includes tests/)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# a trunk of the AlexNet family small enough for a CPU test
TINY_TRUNK = dict(widths=(16, 32, 48, 48, 32), fc_channels=64)


def tiny_overrides(data_root: Path, out_dir: Path, cache: Path) -> list[str]:
    """The real pretrain config shrunk to seconds on a CPU."""
    return [
        f"data.root={data_root}", "data.synthetic=null", "data.batch_size=16", "data.num_workers=0",
        f"paths.cache_dir={cache}", f"paths.log_dir={out_dir.parent}", f"hydra.run.dir={out_dir}",
        "backbone.widths=[16,32,48,48,32]", "backbone.fc_channels=64",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
        "callbacks.samples.every_n_steps=2", "checkpoint.every_n_train_steps=1",
    ]


def probe_pretrained(run_cli: Callable[..., int], pretrain_dir: Path, data_root: Path, tmp_path: Path) -> dict:
    """Run a one-epoch linear probe of conv1/conv5 on ``pretrain_dir``'s last checkpoint (the way a
    user would, through the CLI) and return its results.json; asserts that the probe run succeeded."""
    import json
    out = tmp_path / "probe"
    assert run_cli("probe", f"checkpoint={pretrain_dir / 'checkpoints' / 'last.ckpt'}", f"data.root={data_root}",
                   "data.synthetic=null", "data.num_workers=0", "probe.epochs=1", "probe.layers=[conv1,conv5]",
                   f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}",
                   "trainer.enable_progress_bar=false") == 0
    return json.loads((out / "results.json").read_text())


def synthetic_batch(n: int, classes: int = 10, size: int = 64, seed: int = 1):
    """uint8 N x 3 x size x size images and their labels from the suite's synthetic renderer."""
    import torch

    from ssl_bench.data.synthetic import SyntheticSpec, render
    spec = SyntheticSpec(num_classes=classes, train_per_class=n, val_per_class=1, image_size=size, seed=seed)
    pairs = [render(spec, "train", i) for i in range(n)]
    images = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor([p[1] for p in pairs])


def train_losses(step_loss: Callable[[int], Any], optimizer: Any, steps: int) -> list[float]:
    """Run ``steps`` optimiser steps on ``step_loss(step)``; returns every step's loss (for "the
    loss falls" checks)."""
    losses = []
    for step in range(steps):
        loss = step_loss(step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def save_suite_checkpoint(module, path: Path) -> Path:
    """The suite's checkpoint format: Lightning's state_dict plus the ``ssl_bench`` entry."""
    import torch
    torch.save({"state_dict": module.state_dict(), "ssl_bench": module.checkpoint_meta}, path)
    return path


def brute_force_ap(scores: np.ndarray, labels: np.ndarray, mode: str = "area") -> float:
    """AP from the definitions, with loops over thresholds (O(n^2), no code shared with the suite).

    The PR curve has one point per distinct score t: the items with score >= t are predicted
    positive.  Interpolated precision at recall r = max precision over points with recall >= r.
    Labels in the devkit's {1, 0, -1} convention (any -1 present): 0 = difficult, ignored.
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    if (labels == -1).any():
        keep = labels != 0
        scores, labels = scores[keep], labels[keep]
    pos = labels > 0
    n_pos = pos.sum()
    points = []                                   # (recall, precision)
    for t in sorted(set(scores.tolist()), reverse=True):
        sel = scores >= t
        points.append((pos[sel].sum() / n_pos, pos[sel].sum() / sel.sum()))
    if mode == "voc07":
        total = 0.0
        for k in range(11):
            ps = [p for r, p in points if r >= k / 10]
            total += max(ps) if ps else 0.0
        return total / 11
    ap, prev_r = 0.0, 0.0
    for r, _ in points:
        ap += (r - prev_r) * max(p for r2, p in points if r2 >= r)
        prev_r = r
    return ap


POOL_AFTER = {"conv1": "pool1", "conv2": "pool2", "conv5": "pool5"}


def pre_activations(trunk, x):
    """Each AlexNet layer's conv output (before BN/ReLU), from the previous block's (pooled) output:
    computed through the public forward_features, independently of any hook-based code under test."""
    import torch

    from ssl_bench.models.alexnet import LAYERS
    with torch.no_grad():
        feats = trunk.forward_features(x, LAYERS)
        out = {}
        for i, name in enumerate(LAYERS):
            inp = x if i == 0 else feats[LAYERS[i - 1]]
            if i and LAYERS[i - 1] in POOL_AFTER:
                inp = getattr(trunk, POOL_AFTER[LAYERS[i - 1]])(inp)
            out[name] = getattr(trunk, name)[0](inp)
    return out
