"""Context prediction: patch-pair geometry read back from pixel contents, countermeasures, a loss that falls."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from helpers import synthetic_batch, train_losses

from ssl_bench.models.alexnet import alexnet_small
from ssl_bench.pretext.callbacks import CheckpointMetadata, SampleGrids
from ssl_bench.pretext.context_prediction import POSITION_NAMES, ContextPredictionPretext, position_confusion
from ssl_bench.pretext.patches import (
    GREEN_MAGENTA,
    POSITIONS,
    drop_color,
    min_image_size,
    pixelate,
    project_color,
    sample_patch_pairs,
)

# patch 10, gap 5 -> grid spacing 15; hand-written (dy, dx) of the second patch for labels 0..7
# in the layout 1 2 3 / 4 _ 5 / 6 7 8
OFFSETS_10_5 = {0: (-15, -15), 1: (-15, 0), 2: (-15, 15),
                3: (0, -15), 4: (0, 15),
                5: (15, -15), 6: (15, 0), 7: (15, 15)}


def coordinate_images(n: int, h: int, w: int, dtype=torch.float32) -> torch.Tensor:
    """N x 2 x H x W: channel 0 = row index, channel 1 = column index."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([rows, cols]).to(dtype)[None].expand(n, 2, h, w)


def read_origin(patches: torch.Tensor) -> torch.Tensor:
    """Top-left (y, x) from the patch contents, after checking the whole patch is one contiguous window."""
    y0, x0 = patches[:, 0, 0, 0].long(), patches[:, 1, 0, 0].long()
    p = patches.shape[-1]
    ar = torch.arange(p)
    assert torch.equal(patches[:, 0].long(), (y0[:, None] + ar)[:, :, None].expand(-1, p, p))
    assert torch.equal(patches[:, 1].long(), (x0[:, None] + ar)[:, None, :].expand(-1, p, p))
    return torch.stack([y0, x0], dim=1)


def test_positions_table():
    assert len(POSITIONS) == 8 and len(set(POSITIONS)) == 8 and (0, 0) not in POSITIONS
    assert {k: (15 * r, 15 * c) for k, (r, c) in enumerate(POSITIONS)} == OFFSETS_10_5
    assert min_image_size(96, 48, 7) == 3 * 96 + 2 * 48 + 2 * 7


def test_jitter_free_offsets_match_the_hand_written_layout():
    images = coordinate_images(800, 47, 61)  # larger than the 40 px grid: random placement
    first, second, labels, origins = sample_patch_pairs(images, 10, 5, 0, torch.Generator().manual_seed(0))
    a, b = read_origin(first), read_origin(second)
    assert torch.equal(a, origins[:, 0]) and torch.equal(b, origins[:, 1])
    assert set(labels.tolist()) == set(range(8))
    expected = torch.tensor([OFFSETS_10_5[k] for k in labels.tolist()])
    assert torch.equal(b - a, expected)
    # the centre patch sits one grid step inside the grid, whose placement ranges over the image
    assert a[:, 0].min() == 15 and a[:, 0].max() == 47 - 40 + 15
    assert a[:, 1].min() == 15 and a[:, 1].max() == 61 - 40 + 15


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_jittered_pairs_geometry_and_label_balance(dtype):
    patch, gap, jitter, n = 10, 5, 2, 4000
    h, w = min_image_size(patch, gap, jitter) + 3, min_image_size(patch, gap, jitter) + 30
    images = coordinate_images(n, h, w, dtype)
    first, second, labels, origins = sample_patch_pairs(images, patch, gap, jitter,
                                                        torch.Generator().manual_seed(1))
    assert first.shape == second.shape == (n, 2, patch, patch) and first.dtype == dtype
    assert labels.dtype == torch.int64 and origins.shape == (n, 2, 2)
    a, b = read_origin(first), read_origin(second)
    assert torch.equal(a, origins[:, 0]) and torch.equal(b, origins[:, 1])
    # fully inside the image (negative indices would wrap around: check the origins, not just reads)
    for o in (a, b):
        assert o.min() >= 0 and (o[:, 0] + patch).max() <= h and (o[:, 1] + patch).max() <= w
    expected = torch.tensor(POSITIONS)[labels] * (patch + gap)
    dev = (b - a) - expected
    assert dev.abs().max() <= 2 * jitter
    assert dev.min() == -2 * jitter and dev.max() == 2 * jitter  # the jitter range is really used
    counts = torch.bincount(labels, minlength=8)
    assert counts.min() > 0.8 * n / 8 and counts.max() < 1.2 * n / 8, counts


def test_pairs_are_reproducible_from_the_generator():
    images = torch.randint(0, 256, (16, 3, 50, 50), dtype=torch.uint8)
    run = [sample_patch_pairs(images, 12, 3, 2, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert all(torch.equal(x, y) for x, y in zip(*run))


def test_too_small_images_raise():
    ok = torch.zeros(2, 3, 44, 44, dtype=torch.uint8)
    sample_patch_pairs(ok, 10, 5, 2)
    with pytest.raises(ValueError, match="data.crop_size") as err:
        sample_patch_pairs(torch.zeros(2, 3, 44, 43, dtype=torch.uint8), 10, 5, 2)
    assert "pretext.patch_size" in str(err.value) and "pretext.jitter" in str(err.value)


def test_drop_color_keeps_one_channel_and_replaces_the_others_by_weak_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 3, 8, 8, generator=g) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + 0.3
    out = drop_color(x, g)
    same = (out == x).flatten(2).all(dim=2)  # 300 x 3
    assert torch.equal(same.sum(1), torch.ones(300, dtype=torch.long))
    kept = same.float().argmax(1)
    assert torch.bincount(kept, minlength=3).min() > 60  # each channel kept about a third of the time
    kept_std = x[torch.arange(300), kept].flatten(1).std(1, unbiased=False)
    other_std = out.flatten(2).std(2)[~same].view(300, 2)
    ratio = other_std / kept_std[:, None]
    assert 0.005 < ratio.mean() < 0.015 and ratio.max() < 0.03
    assert out[~same.view(300, 3, 1, 1).expand_as(out)].abs().mean() < 0.05  # zero-mean noise


def test_project_color_removes_the_green_magenta_axis():
    x = torch.randn(10, 3, 6, 6, dtype=torch.float64)
    a = torch.tensor(GREEN_MAGENTA, dtype=torch.float64).view(1, 3, 1, 1)
    assert abs(a.norm().item() - 1) < 1e-12
    out = project_color(x)
    assert (out * a).sum(1).abs().max() < 1e-12
    assert torch.allclose(project_color(out), out, atol=1e-12)
    grey_and_red_blue = torch.tensor([[0.7, 0.7, 0.7], [1.0, 0.0, -1.0]], dtype=torch.float64).view(2, 3, 1, 1)
    assert torch.allclose(project_color(grey_and_red_blue), grey_and_red_blue)
    green = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).view(1, 3, 1, 1)
    assert torch.allclose(project_color(green).flatten(), torch.tensor([1 / 3, 1 / 3, 1 / 3], dtype=torch.float64))


def test_pixelate_keeps_about_the_requested_number_of_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 20, 20, dtype=torch.float64, generator=g)
    assert torch.equal(pixelate(x, 0.0, 25, g), x)
    out = pixelate(x, 1.0, 25, g)  # side 5: each channel is (upsample) S (upsample)^T, rank <= 5
    assert out.shape == x.shape
    s = torch.linalg.svdvals(out.flatten(0, 1))  # 18 x 20
    assert (s[:, 5:] < 1e-9 * s[:, :1]).all() and (s[:, 4] > 1e-4 * s[:, 0]).all()
    # smoothness: pixelated patches lose most of the pixel-to-pixel variation
    tv = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs().mean()  # noqa: E731
    assert tv(out) < 0.5 * tv(x)
    # prob in (0, 1): each patch is either untouched or exactly the pixelated version
    many = torch.randn(400, 3, 12, 12, generator=g)
    mixed, coarse = pixelate(many, 0.5, 16, g), pixelate(many, 1.0, 16, g)
    untouched = (mixed == many).flatten(1).all(1)
    assert torch.equal(mixed[~untouched], coarse[~untouched])
    assert 0.4 < untouched.float().mean() < 0.6


def synthetic_images(n: int) -> torch.Tensor:
    return synthetic_batch(n, seed=2)[0]


def small_trunk(input_space: str = "rgb"):
    return alexnet_small(input_space=input_space, widths=(16, 32, 48, 48, 32), fc_channels=64)


def make(**kwargs) -> ContextPredictionPretext:
    args = dict(patch_size=16, gap=4, jitter=1, head_channels=64, channels_last=False)
    return ContextPredictionPretext(small_trunk(), lambda p: torch.optim.Adam(p, lr=1e-3), **{**args, **kwargs})


def test_module_validation_and_meta():
    module = make(color="project")
    meta = module.checkpoint_meta
    assert meta["pretext"] == "context_prediction" and meta["input_space"] == "rgb"
    assert meta["variant"] == "project" and (meta["patch_size"], meta["gap"], meta["jitter"]) == (16, 4, 1)
    with pytest.raises(ValueError, match="input_space"):
        ContextPredictionPretext(alexnet_small(), lambda p: None, input_space="rgb")  # an L trunk
    with pytest.raises(ValueError, match="pretext.color.*drop"):
        make(color="grey")


def ramp_images(n: int, size: int = 64) -> torch.Tensor:
    """uint8 N x 3 x size x size whose grey level 3 y + x (plus weak noise) tells every pixel's place:
    a relative-position signal that any correct pairing of patches and labels makes learnable."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    level = (3 * yy + xx).float() * (250.0 / (4 * (size - 1)))
    noise = torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(0)) * 4.0
    return (level + noise).clamp(0, 255).round().to(torch.uint8).expand(n, 3, size, size).contiguous()


@pytest.mark.parametrize("color, margin", [("project", 0.25), ("drop", 0.25)])
def test_forward_shapes_and_loss_falls(color, margin):
    """60 Adam steps on the same 32 ramp images (fresh pairs every step), pixelation on: a module that
    pairs patches and labels consistently learns the position (chance log 8 = 2.08)."""
    torch.manual_seed(0)
    images = ramp_images(32)
    module = make(color=color)
    logits, labels = module(images)
    assert logits.shape == (32, 8) and labels.shape == (32,) and labels.dtype == torch.int64
    losses = train_losses(lambda _: torch.nn.functional.cross_entropy(*module(images)),
                          module.configure_optimizers(), 60)
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < math.log(8) - margin and last < first - margin, (first, last, losses)


def test_trainer_run_writes_pairs_confusion_and_meta(tmp_path):
    import pytorch_lightning as pl

    pl.seed_everything(0, verbose=False)
    images = synthetic_images(16)
    batches = [{"image": images[:8], "label": torch.zeros(8, dtype=torch.long), "skipped": []},
               {"image": images[8:], "label": torch.zeros(8, dtype=torch.long), "skipped": ["bad.jpg"]}]
    loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)
    module = make()
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=1,
                         default_root_dir=str(tmp_path), callbacks=[SampleGrids(every_n_steps=1), CheckpointMetadata()])
    with pytest.warns(UserWarning, match="bad.jpg"):
        trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    samples = tmp_path / "samples"
    assert (samples / "step_0000000.png").is_file() and (samples / "step_0000001.png").is_file()
    assert (samples / "position_confusion_epoch_000.png").is_file()
    with open(samples / "position_confusion_epoch_000.csv") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 9 and rows[0][1].startswith("1") and rows[8][0].startswith("8")
    assert sum(int(v) for row in rows[1:] for v in row[1:]) == 16  # one pair per val image, no sanity pass
    # results.json's copy is the same matrix, as plain lists (JSON-ready)
    recorded = module.pretext_metrics
    assert recorded["position_names"] == list(POSITION_NAMES)
    assert recorded["position_confusion"] == [[int(v) for v in row[1:]] for row in rows[1:]]
    assert all(type(v) is int for row in recorded["position_confusion"] for v in row)
    metrics = trainer.callback_metrics
    assert {"pretrain/loss", "pretrain/acc", "pretrain/val_loss", "pretrain/val_acc"} <= set(metrics)
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    meta = torch.load(ckpt, weights_only=False)["ssl_bench"]
    assert meta["pretext"] == "context_prediction" and meta["skipped_images"] >= 1
    assert module.final_samples(images) == samples / "final.png" and (samples / "final.png").is_file()
    assert make().final_samples(images) is None  # outside a Trainer


def test_position_confusion_matches_sklearn():
    from sklearn.metrics import confusion_matrix

    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 8, (50,), generator=gen)
    pred = torch.where(torch.rand(50, generator=gen) < 0.6, labels, torch.randint(0, 8, (50,), generator=gen))
    expected = confusion_matrix(labels.numpy(), pred.numpy(), labels=list(range(8)))  # rows = true
    assert position_confusion(labels, pred).tolist() == expected.tolist()


def test_validation_accumulates_the_confusion_of_its_pairs():
    """validation_step's matrix equals sklearn's on the same pairs (regenerated from the same seed)."""
    from sklearn.metrics import confusion_matrix

    images = synthetic_images(12)
    module = make().eval()
    assert module.pretext_metrics == {}  # no finished validation epoch yet
    with torch.no_grad():
        module.on_validation_epoch_start()
        for chunk in images.split(4):
            module.validation_step({"image": chunk, "label": torch.zeros(4, dtype=torch.long), "skipped": []}, 0)
        gen = torch.Generator().manual_seed(20150507)  # the module's validation seed (rank 0)
        truth, pred = [], []
        for chunk in images.split(4):
            x, labels = module.pairs(chunk, gen)
            truth.append(labels)
            pred.append(module.classify(x).argmax(1))
    expected = confusion_matrix(torch.cat(truth).numpy(), torch.cat(pred).numpy(), labels=list(range(8)))
    assert module.confusion.tolist() == expected.tolist() and expected.sum() == 12
