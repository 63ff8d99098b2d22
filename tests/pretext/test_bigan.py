"""BiGAN: network shapes, the losses against the released code's printed values, a short fixed-seed
run under a Trainer (both optimisers step, no collapse), and the trunk probed end to end."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
from helpers import probe_pretrained, synthetic_batch, tiny_overrides
from torch.utils.data import DataLoader

from ssl_bench.models.alexnet import alexnet_small
from ssl_bench.pretext.bigan import BiGANPretext, Generator, JointDiscriminator, mean_pairwise_distance
from ssl_bench.pretext.callbacks import SampleGrids
from ssl_bench.pretext.losses import bigan_discriminator_loss, bigan_generator_loss


@pytest.mark.parametrize("size", [8, 32, 64])
def test_generator_and_discriminator_shapes(size):
    z = torch.rand(3, 20) * 2 - 1
    x = Generator(20, size, 8)(z)
    assert x.shape == (3, 3, size, size) and x.min() >= -1 and x.max() <= 1
    assert JointDiscriminator(20, size, 8)(x, z).shape == (3,)
    with pytest.raises(ValueError, match="pretext.image_size"):
        Generator(20, 48)


def test_losses_at_chance_are_log_two_and_match_the_definition():
    zero = torch.zeros(5)
    # the released code prints "JD: 0.6932  E: 0.6932  G: 0.6932" at iteration 0 (jeffdonahue/bigan README)
    assert bigan_discriminator_loss(zero, zero).item() == pytest.approx(0.6931, abs=1e-4)
    assert bigan_generator_loss(zero, zero).item() == pytest.approx(0.6931, abs=1e-4)
    r, f = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])

    def sig(v):
        return 1 / (1 + math.exp(-v))

    disc = 0.5 * (sum(-math.log(sig(v)) for v in r) / 2 + sum(-math.log(1 - sig(v)) for v in f) / 2)
    gen = 0.5 * (sum(-math.log(1 - sig(v)) for v in r) / 2 + sum(-math.log(sig(v)) for v in f) / 2)
    assert bigan_discriminator_loss(r, f).item() == pytest.approx(disc, rel=1e-6)
    assert bigan_generator_loss(r, f).item() == pytest.approx(gen, rel=1e-6)


def module(lr: float = 2e-4, **kw) -> BiGANPretext:
    torch.manual_seed(0)
    trunk = alexnet_small(input_space="rgb", widths=(16, 32, 48, 48, 32), fc_channels=64)
    kw = {"latent_dim": 16, "image_size": 16, "encoder_size": 32, "generator_width": 16,
          "discriminator_width": 16, "channels_last": False, **kw}
    return BiGANPretext(trunk, lambda p: torch.optim.Adam(p, lr=lr, betas=(0.5, 0.999)), **kw)


def loader(x: torch.Tensor, batches: int) -> DataLoader:
    data = [{"image": x[i::batches], "label": torch.zeros(len(x[i::batches]), dtype=torch.long), "skipped": []}
            for i in range(batches)]
    return DataLoader(data, batch_size=None)


def test_short_fixed_seed_run_trains_both_sides_without_collapse(tmp_path):
    pl.seed_everything(0)
    x = synthetic_batch(64, size=32, seed=2)[0]
    model = module(lr=2e-3)  # the tiny nets' N(0, 0.02) init needs a larger step to leave 0 in 48 batches
    g0 = [p.detach().clone() for p in model.generator.parameters()]
    d0 = [p.detach().clone() for p in model.discriminator.parameters()]
    e0 = model.encoder_head.weight.detach().clone()
    trainer = pl.Trainer(max_epochs=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         num_sanity_val_steps=0, callbacks=[SampleGrids(every_n_steps=10)])
    trainer.fit(model, train_dataloaders=loader(x, 8), val_dataloaders=loader(x[:16], 1))
    assert trainer.global_step == 2 * 6 * 8  # two optimiser steps per batch
    assert any(not torch.equal(a, b) for a, b in zip(g0, model.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, model.discriminator.parameters()))
    assert not torch.equal(e0, model.encoder_head.weight)
    metrics = trainer.callback_metrics
    for key in ("pretrain/loss", "pretrain/disc_loss", "pretrain/val_loss", "pretrain/val_sample_spread"):
        assert torch.isfinite(metrics[key]), key
    # no collapse: samples of distinct latents differ by a good fraction of what distinct images do
    model.eval()
    with torch.no_grad():
        fake = model.generator(model._uniform(32, torch.Generator().manual_seed(1)))
    assert mean_pairwise_distance(fake) > 0.2 * mean_pairwise_distance(model.discriminator_input(x[:32]))
    assert (tmp_path / "samples" / "val_epoch_005.png").is_file()
    assert model.final_samples(x[:4]).name == "final.png"


def test_configuration_errors_name_the_key():
    with pytest.raises(ValueError, match="pretext.encoder_size"):
        module(encoder_size=8)
    with pytest.raises(ValueError, match="data.crop_size"):
        module().forward_pairs(synthetic_batch(2, size=48)[0])


def test_pretrains_and_is_probed_from_its_checkpoint(tiny_data, tmp_path, run_cli):
    out = tmp_path / "run"
    assert run_cli("pretrain", "experiment=demo_bigan", *tiny_overrides(tiny_data, out, tmp_path / "cache"),
                   "pretext.image_size=16", "pretext.generator_width=16", "pretext.discriminator_width=16") == 0
    record = json.loads((out / "results.json").read_text())
    assert record["method"] == "bigan" and record["trunk"]["input_space"] == "rgb"
    assert {"pretrain/loss", "pretrain/disc_loss", "pretrain/val_recon_error"} <= set(record["metrics"])
    assert (out / "samples" / "final.png").is_file()
    probe = probe_pretrained(run_cli, out, tiny_data, tmp_path)
    assert probe["method"] == "bigan" and 0 <= probe["metrics"]["probe/conv5/top1"] <= 100
