"""Autoencoder: the reconstruction loss against a per-pixel loop, shapes, a loss that falls, and the
trunk pretrained through the CLI and probed from its checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import probe_pretrained, synthetic_batch, tiny_overrides, train_losses

from ssl_bench.models.alexnet import alexnet_small
from ssl_bench.pretext.autoencoder import AutoencoderPretext
from ssl_bench.pretext.losses import image_l2


def module(size: int = 48) -> AutoencoderPretext:
    torch.manual_seed(0)
    trunk = alexnet_small(input_space="rgb", widths=(16, 32, 48, 48, 32), fc_channels=64)
    return AutoencoderPretext(trunk, lambda p: torch.optim.Adam(p, lr=1e-3), image_size=size, channels_last=False)


def test_image_l2_equals_a_per_pixel_loop():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    ref = sum(float(((a[n, :, i, j] - b[n, :, i, j]) ** 2).sum()) for n in range(2) for i in range(4)
              for j in range(5)) / (2 * 4 * 5)
    assert image_l2(a, b).item() == pytest.approx(ref, rel=1e-6)


def test_reconstruction_shape_and_loss_falls():
    model = module()
    x = synthetic_batch(8, size=48)[0]
    pred = model(x)
    assert pred.shape == (8, 3, 48, 48) and pred.abs().max() <= 1
    target = x.float() / 127.5 - 1
    losses = train_losses(lambda _: image_l2(model(x), target), torch.optim.Adam(model.parameters(), lr=1e-3), 15)
    assert losses[-1] < 0.6 * losses[0]
    with pytest.raises(ValueError, match="pretext.image_size"):
        model(synthetic_batch(2, size=32)[0])
    assert model.checkpoint_meta["pretext"] == "autoencoder"


def test_pretrains_and_is_probed_from_its_checkpoint(tiny_data, tmp_path, run_cli):
    out = tmp_path / "run"
    assert run_cli("pretrain", "experiment=demo_autoencoder", *tiny_overrides(tiny_data, out, tmp_path / "cache")) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["method"] == "autoencoder" and record["trunk"]["input_space"] == "rgb"
    assert (out / "samples" / "final.png").is_file()
    probe = probe_pretrained(run_cli, out, tiny_data, tmp_path)
    assert probe["method"] == "autoencoder" and 0 <= probe["metrics"]["probe/conv5/top1"] <= 100
