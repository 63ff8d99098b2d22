"""Live probes while pretraining: the callback observes without changing the training, and logs a
kNN accuracy that an independent 1-NN (scikit-learn) on independently computed features reproduces."""

from __future__ import annotations

import csv
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_TRUNK, synthetic_batch, tiny_overrides
from sklearn.neighbors import KNeighborsClassifier

from ssl_bench.data.datamodule import ImageDataModule
from ssl_bench.errors import ConfigError
from ssl_bench.models.alexnet import alexnet_small
from ssl_bench.models.inputs import trunk_input
from ssl_bench.models.split_brain import SplitBrainAlexNet
from ssl_bench.pretext.monitor import LiveProbe, modes_kept, rng_guard, trunk_features

MONITOR = ["callbacks.monitor.every_n_epochs=1", "callbacks.monitor.k=1", "callbacks.monitor.tsne_every_n_epochs=2"]


def _run(run_cli, tiny_data, out, cache, *extra):
    # BiGAN draws its latents from the global torch RNG every step: a probe that consumed it would show
    assert run_cli("pretrain", "experiment=demo_bigan", *tiny_overrides(tiny_data, out, cache),
                   "pretext.generator_width=8", "pretext.discriminator_width=8", "callbacks.samples.every_n_steps=0",
                   "trainer.max_epochs=2", "trainer.deterministic=true", *extra) == 0
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def _reference_top1(state: dict, tiny_data) -> float:
    """1-NN (cosine) of conv5 resized to 6 x 6, from the checkpoint's trunk, computed without the suite's probe."""
    trunk = alexnet_small(input_space="rgb", **TINY_TRUNK)
    trunk.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("trunk.")})
    trunk.eval()
    dm = ImageDataModule(str(tiny_data), crop_size=56, load_size=None, num_workers=0, batch_size=500)
    dm.setup()
    feats = {}
    for split in ("train", "val"):
        batch = next(iter(dm.split_loader(split)))
        with torch.no_grad():
            conv5 = trunk.forward_features(trunk_input(batch["image"], "rgb"), ("conv5",))["conv5"]
        x = F.interpolate(conv5, size=(6, 6), mode="bilinear", align_corners=False).flatten(1).numpy()
        feats[split] = (x, batch["label"].numpy())
    knn = KNeighborsClassifier(n_neighbors=1, metric="cosine").fit(*feats["train"])
    return 100.0 * float((knn.predict(feats["val"][0]) == feats["val"][1]).mean())


def test_probe_leaves_the_weights_bit_identical_and_logs_the_knn_accuracy(tiny_data, tmp_path, run_cli):
    plain = _run(run_cli, tiny_data, tmp_path / "plain", tmp_path / "cache")
    out = tmp_path / "probed"
    probed = _run(run_cli, tiny_data, out, tmp_path / "cache", *MONITOR)
    assert plain.keys() == probed.keys() and all(torch.equal(plain[k], probed[k]) for k in plain)
    (metrics,) = (out / "csv").glob("version_*/metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("monitor/knn/conv5/top1")]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    top1 = [float(r["monitor/knn/conv5/top1"]) for r in rows]
    assert all(0.0 <= t <= 100.0 for t in top1)
    # the bank (80) and query (20) subsets hold the whole tiny splits: the last probe saw last.ckpt's trunk
    assert top1[-1] == pytest.approx(_reference_top1(probed, tiny_data), abs=1e-4)
    assert (out / "monitor" / "tsne_conv5_epoch_001.png").is_file()


@pytest.mark.parametrize("trunk", [alexnet_small(input_space="L", **TINY_TRUNK),
                                   alexnet_small(input_space="rgb", **TINY_TRUNK),
                                   SplitBrainAlexNet(widths=(16, 32, 48, 48, 32), fc_channels=64)],
                         ids=["L", "rgb", "split_brain"])
def test_features_of_every_trunk_leave_it_untouched(trunk):
    images, _ = synthetic_batch(6, classes=3)
    trunk.train()
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    grads = [p.requires_grad for p in trunk.parameters()]
    feats = trunk_features(trunk, images, ["conv3", "conv5"], batch_size=4)
    assert feats["conv5"].shape[0] == 6 and feats["conv3"].shape[1] > 0
    assert trunk.training and [p.requires_grad for p in trunk.parameters()] == grads
    assert all(torch.equal(before[k], v) for k, v in trunk.state_dict().items())


def test_features_never_run_the_original_trunk():
    trunk, calls = alexnet_small(input_space="rgb", **TINY_TRUNK), []
    own = trunk.forward_features
    # what compile=true does: an instance attribute bound to the original trunk
    trunk.forward_features = lambda x, layers: calls.append(1) or own(x, layers)
    trunk_features(trunk, synthetic_batch(2, classes=2)[0], ["conv5"])
    assert calls == []


def test_modes_are_put_back_as_found():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).train()
    net[1].eval()  # a module frozen by its owner stays frozen
    with modes_kept(net):
        net.eval()
    assert net.training and net[0].training and not net[1].training


def test_rng_guard_restores_every_stream():
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    with rng_guard():
        torch.rand(10), np.random.rand(10), random.random()
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="callbacks.monitor.every_n_epochs"):
        LiveProbe(every_n_epochs=-1)
    with pytest.raises(ConfigError, match="callbacks.monitor.bank_size"):
        LiveProbe(every_n_epochs=1, bank_size=0)
