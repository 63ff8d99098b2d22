"""Context encoder: masks, overlap weights, the masked L2 loss, a loss that falls, the GAN branch."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from helpers import synthetic_batch, train_losses
from torch.utils.data import DataLoader

from ssl_bench.models.alexnet import alexnet_small
from ssl_bench.models.inputs import trunk_input
from ssl_bench.pretext.callbacks import CheckpointMetadata, SampleGrids
from ssl_bench.pretext.context_encoder import ContextEncoderPretext, masked_l2
from ssl_bench.pretext.masks import (
    MASK_KINDS,
    center_mask,
    input_hole,
    loss_weights,
    make_masks,
    random_block_mask,
    random_region_mask,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 16, size: int = 48, seed: int = 1) -> torch.Tensor:
    return synthetic_batch(n, size=size, seed=seed)[0]


def module(size: int = 48, lr: float = 1e-3, **kw) -> ContextEncoderPretext:
    torch.manual_seed(0)
    kw = {"bottleneck_channels": 64, "decoder_widths": [64, 32, 16], **kw}
    return ContextEncoderPretext(alexnet_small(input_space="rgb"), lambda p: torch.optim.Adam(p, lr=lr),
                                 image_size=size, **kw)


# ------------------------------------------------------------------------------------------ masks

@pytest.mark.parametrize("size", [8, 16, 56, 128])
def test_center_mask_is_the_central_quarter(size):
    m = center_mask(3, size)
    ref = torch.zeros(3, 1, size, size, dtype=torch.bool)
    ref[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = True
    assert m.dtype == torch.bool and m.shape == (3, 1, size, size)
    assert torch.equal(m, ref)
    assert m.float().mean().item() == 0.25


def test_random_region_area_within_20_to_30_percent_and_shapes_differ():
    size, n = 56, 300
    m = random_region_mask(n, size, gen(0))
    assert m.dtype == torch.bool and m.shape == (n, 1, size, size)
    frac = m.float().mean((1, 2, 3))
    tol = 1.0 / size ** 2
    assert frac.min() >= 0.2 - tol and frac.max() <= 0.3 + tol, (frac.min(), frac.max())
    assert frac.std() > 0.02  # coverage drawn per image, not fixed
    assert len(torch.unique(m.flatten(1), dim=0)) == n  # every sample a different shape
    # smooth blobs, not pixel noise: few horizontal transitions (about 0.05 with the 8x8 grid)
    edges = (m[..., 1:] != m[..., :-1]).float().mean()
    assert edges < 0.1, edges  # i.i.d. pixels at 25% coverage: 2 * 0.25 * 0.75 = 0.375


@pytest.mark.parametrize("size", [56, 64])
def test_random_block_coverage_up_to_a_quarter(size):
    n = 300
    m = random_block_mask(n, size, gen(1))
    assert m.dtype == torch.bool and m.shape == (n, 1, size, size)
    frac = m.float().mean((1, 2, 3))
    biggest = (round(0.25 * size) / size) ** 2  # documented: (0.25 - biggest block, 0.25]
    assert frac.max() <= 0.25 and frac.min() > 0.25 - biggest, (frac.min(), frac.max())
    assert len(torch.unique(m.flatten(1), dim=0)) == n
    # more than one block per image on average: the union is not a single rectangle
    rows, cols = m.any(3).sum((1, 2)), m.any(2).sum((1, 2))
    assert (rows * cols > m.sum((1, 2, 3))).float().mean() > 0.9


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_masks_are_deterministic_with_a_seeded_generator(kind):
    a, b = make_masks(kind, 8, 32, gen(5)), make_masks(kind, 8, 32, gen(5))
    assert a.dtype == torch.bool and a.shape == (8, 1, 32, 32) and torch.equal(a, b)
    if kind != "center":
        assert not torch.equal(a, make_masks(kind, 8, 32, gen(6)))


def test_unknown_mask_kind_names_the_key():
    with pytest.raises(ValueError, match=r"pretext\.mask.*center"):
        make_masks("checkerboard", 2, 16)


def test_hole_and_weights_for_the_centre_mask_match_a_hand_built_map():
    m = center_mask(2, 16)
    ref = torch.zeros(16, 16)
    ref[4:12, 4:12] = 10.0  # 8x8 centre; the 2-px ring stays 10
    ref[6:10, 6:10] = 1.0  # inner 4x4 hidden hole
    w = loss_weights(m, overlap=2, overlap_weight=10.0)
    assert w.dtype == torch.float32 and w.shape == (2, 1, 16, 16)
    assert torch.equal(w, ref.expand(2, 1, 16, 16))
    assert torch.equal(input_hole(m, 2), ref.expand(2, 1, 16, 16) == 1.0)
    assert torch.equal(input_hole(m, 0), m) and torch.equal(loss_weights(m, 0), m.float())


def test_encoder_input_zeroes_exactly_the_hidden_hole():
    model = module(32)
    x = images(4, 32)
    hole = input_hole(make_masks("random_region", 4, 32, gen(2)), 2)
    inp, ref = model.encoder_input(x, hole), trunk_input(x, "rgb")
    h = hole.expand_as(ref)
    assert (inp[h] == 0).all() and torch.equal(inp[~h], ref[~h])


def test_loss_equals_a_brute_force_per_pixel_sum():
    g = gen(3)
    pred, target = torch.rand(2, 3, 5, 5, generator=g) * 2 - 1, torch.rand(2, 3, 5, 5, generator=g) * 2 - 1
    w = torch.randint(0, 3, (2, 1, 5, 5), generator=g).float() * 4.5
    num = den = 0.0
    for n, i, j in itertools.product(range(2), range(5), range(5)):
        wi = w[n, 0, i, j].item()
        num += wi * sum((pred[n, c, i, j].item() - target[n, c, i, j].item()) ** 2 for c in range(3))
        den += wi
    assert masked_l2(pred, target, w).item() == pytest.approx(num / den, rel=1e-5)


# --------------------------------------------------------------------------------------- training

def test_l2_loss_falls_on_synthetic_images():
    x = images(16, 48)
    model = module(48)

    def loss(_: int) -> torch.Tensor:
        pred, target, _, weights = model.inpaint(x)
        return masked_l2(pred, target, weights)
    losses = train_losses(loss, model.configure_optimizers(), 50)
    assert np.isfinite(losses).all()
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10]), losses


def test_validation_masks_are_fixed_across_calls():
    model = module(32, mask="random_region").eval()
    x = images(4, 32)
    with torch.no_grad():
        a = model.inpaint(x, torch.Generator().manual_seed(7))
        b = model.inpaint(x, torch.Generator().manual_seed(7))
    assert torch.equal(a[2], b[2]) and torch.equal(a[0], b[0])


def batches(x: torch.Tensor, k: int = 2) -> DataLoader:
    data = [{"image": x, "label": torch.zeros(len(x), dtype=torch.long), "skipped": []}] * k
    return DataLoader(data, batch_size=None)


def test_adversarial_step_runs_both_optimisers_under_a_trainer(tmp_path):
    x = images(8, 32)
    model = module(32, mask="random_block", adversarial_weight=0.001, decoder_widths=[32, 16, 16])
    assert not model.automatic_optimization
    disc0 = copy.deepcopy(model.discriminator.state_dict())
    dec0 = copy.deepcopy(model.decoder.state_dict())
    trainer = pl.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[SampleGrids(every_n_steps=1)])
    trainer.fit(model, train_dataloaders=batches(x), val_dataloaders=batches(x, 1))

    def changed(before, after):
        return any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())

    assert changed(disc0, model.discriminator.state_dict())
    assert changed(dec0, model.decoder.state_dict())
    metrics = trainer.callback_metrics
    for key in ("pretrain/loss", "pretrain/rec_loss", "pretrain/adv_loss", "pretrain/disc_loss", "pretrain/val_loss"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    expected = 0.999 * metrics["pretrain/rec_loss"] + 0.001 * metrics["pretrain/adv_loss"]
    assert metrics["pretrain/loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert (tmp_path / "samples" / "val_epoch_000.png").is_file()
    # two optimiser steps per batch under manual optimisation: the sample step counts batches
    assert trainer.global_step == 2 and [p.name for p in (tmp_path / "samples").glob("step_*")] == ["step_0000000.png"]
    assert model.final_samples(x).name == "final.png"


def test_meta_and_configuration_errors():
    model = module(32)
    meta = model.checkpoint_meta
    assert meta["pretext"] == "context_encoder" and meta["variant"] == "center"
    assert meta["input_space"] == "rgb" and meta["image_size"] == 32
    with pytest.raises(ValueError, match=r"pretext\.image_size.*data\.crop_size"):
        model.inpaint(images(2, 48))
    with pytest.raises(ValueError, match=r"pretext\.decoder_widths"):
        module(32, decoder_widths=[16])
    with pytest.raises(ValueError, match=r"pretext\.mask"):
        module(32, mask="ring")
    with pytest.raises(ValueError, match="input_space"):
        ContextEncoderPretext(alexnet_small(), lambda p: None, image_size=32)  # an L trunk
    ckpt: dict = {}
    model.skips.count = 3
    CheckpointMetadata().on_save_checkpoint(None, model, ckpt)
    assert ckpt["ssl_bench"] == {**meta, "skipped_images": 3}
    resumed = module(32)
    CheckpointMetadata().on_load_checkpoint(None, resumed, ckpt)
    assert resumed.skips.count == 3
