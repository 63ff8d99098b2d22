"""The colorization LightningModule: targets built on the batch, a loss that falls, colorize()."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_bench import color
from ssl_bench.data.synthetic import SyntheticSpec, render
from ssl_bench.models.alexnet import alexnet_small
from ssl_bench.pretext.colorization import ColorizationPretext, ColorObjective


def batch(n: int = 16) -> torch.Tensor:
    spec = SyntheticSpec(num_classes=10, image_size=64, seed=1)
    imgs = np.stack([render(spec, "train", i)[0][4:60, 4:60] for i in range(n)])
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()


def make(objective: ColorObjective, images: torch.Tensor) -> ColorizationPretext:
    torch.manual_seed(0)
    prior = color.empirical_prior([color.lab_from_uint8(images, 8)[1]], sigma=5.0)
    return ColorizationPretext(alexnet_small(), objective, lambda p: torch.optim.Adam(p, lr=1e-3),
                               prior=prior if objective.rebalance else None)


@pytest.mark.parametrize("objective", [ColorObjective(), ColorObjective(rebalance=False),
                                       ColorObjective(kind="regression")])
def test_loss_falls_over_20_steps(objective):
    images = batch()
    module = make(objective, images)
    opt = module.configure_optimizers()
    losses = []
    for _ in range(20):
        out, ab, _ = module(images)
        loss, _ = module.objective.loss(out, ab, module.bin_weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_forward_shapes_and_colorize():
    images = batch(4)
    module = make(ColorObjective(), images).eval()
    out, ab, L = module(images)
    assert out.shape == (4, 313, 7, 7) and ab.shape == (4, 2, 7, 7) and L.shape == (4, 1, 56, 56)
    rgb = module.colorize(images)
    assert rgb.shape == (4, 3, 56, 56) and 0 <= rgb.min() and rgb.max() <= 1
    # colorize keeps the input's lightness at full resolution
    L_back = color.rgb_to_lab(rgb)[:, :1]
    assert (L_back - L).abs().mean() < 1.5


def test_rebalanced_loss_needs_prior_and_an_L_trunk():
    with pytest.raises(ValueError, match="prior"):
        ColorizationPretext(alexnet_small(), ColorObjective(), lambda p: None)
    with pytest.raises(ValueError, match="backbone.in_channels"):
        ColorizationPretext(alexnet_small(in_channels=3), ColorObjective(rebalance=False), lambda p: None)
