"""The colorization LightningModule: targets built on the batch, a loss that falls, colorize()."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import train_losses

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

    def loss(_: int) -> torch.Tensor:
        out, ab, _ = module(images)
        return module.objective.loss(out, ab, module.bin_weights)[0]
    losses = train_losses(loss, module.configure_optimizers(), 20)
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


class FakeData:
    """What `data_arguments` reads of the datamodule; counts the batches it hands out."""

    def __init__(self, images: torch.Tensor, batch_size: int) -> None:
        self.images, self.batch_size, self.fingerprint, self.served = images, batch_size, "fake", 0

    def eval_train_dataloader(self):
        for i in range(0, len(self.images), self.batch_size):
            self.served += 1
            yield {"image": self.images[i:i + self.batch_size]}


def test_data_arguments_estimate_the_prior_only_for_a_rebalancing_objective(tmp_path):
    images = batch(32)
    args = {"ab_stride": 8}
    for objective in (ColorObjective(rebalance=False), ColorObjective(kind="regression")):
        assert ColorizationPretext.data_arguments(FakeData(images, 8), tmp_path, {**args, "objective": objective}) == {}
    data = FakeData(images, 8)
    derived = ColorizationPretext.data_arguments(data, tmp_path, {**args, "objective": ColorObjective(prior_images=20)})
    assert data.served == 2  # 20 images = two whole batches of 8
    expected = color.empirical_prior([color.lab_from_uint8(images[:16], 8)[1]], sigma=5.0)
    assert torch.allclose(derived["prior"], expected) and list(tmp_path.glob("prior-fake-n20-*.pt"))
    again = FakeData(images, 8)
    cached = ColorizationPretext.data_arguments(again, tmp_path, {**args, "objective": ColorObjective(prior_images=20)})
    assert again.served == 0 and torch.equal(cached["prior"], derived["prior"])  # read from the cache


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # no Trainer here
def test_training_step_returns_its_loss_and_picture_material():
    images = batch(4)
    module = make(ColorObjective(), images)
    out = module.training_step({"image": images, "label": torch.zeros(4, dtype=torch.long), "skipped": []}, 0)
    L, pred, ab = out["samples"]
    assert out["loss"].requires_grad and not pred.requires_grad
    assert L.shape == (4, 1, 56, 56) and pred.shape == (4, 313, 7, 7) and ab.shape == (4, 2, 7, 7)
    empty = {"image": torch.zeros(0, 3, 56, 56, dtype=torch.uint8), "label": torch.zeros(0), "skipped": ["x"]}
    with pytest.warns(UserWarning, match="unreadable image x"):
        assert module.training_step(empty, 1) is None and module.skips.count == 1
