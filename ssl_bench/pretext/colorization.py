"""Colorization as cross-channel encoding (Zhang, Isola, Efros 2016): predict ab from L.

Loaders hand over uint8 crops; Lab conversion, ab decimation, soft-encoding and rebalancing weights
run batched on the accelerator here, so the pretext machinery costs little next to the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_bench import color
from ssl_bench.errors import ConfigError
from ssl_bench.pretext import common
from ssl_bench.pretext.common import NonFiniteLossError, SkipCounter
from ssl_bench.pretext.losses import l2_regression, resize_to, soft_cross_entropy_map
from ssl_bench.pretext.samples import save_colorization_grid

__all__ = ["ColorObjective", "ColorizationPretext", "NonFiniteLossError", "dataset_prior", "training_prior"]


class ColorObjective:
    """What the network predicts and how it is scored (``pretext.objective`` of conf/pretext/colorization.yaml).

    A plain class rather than a dataclass: Hydra would turn a dataclass passed to ``instantiate``
    back into a config node.

    Args:
        kind: "classification" (313-way soft-encoded cross-entropy) or "regression" (L2 on ab).
        rebalance: weight pixels by the inverse smoothed prior ("full"); False is the "class" ablation.
        lam: prior/uniform mixing lambda of the rebalancing weights.
        neighbors, sigma: soft-encoding K and Gaussian sigma (authors' code K=10; paper text K=5).
        prior_sigma: smoothing of the empirical prior in ab space (paper text 5; None = raw counts).
        prior_images: estimate the prior on at most this many training images (None = all).
    """

    def __init__(self, kind: str = "classification", rebalance: bool = True, lam: float = 0.5,
                 neighbors: int = 10, sigma: float = 5.0, prior_sigma: float | None = 5.0,
                 prior_images: int | None = None) -> None:
        if kind not in ("classification", "regression"):
            raise ConfigError(f"pretext.objective.kind: expected 'classification' or 'regression', got {kind!r}")
        self.kind, self.lam, self.neighbors, self.sigma = kind, lam, neighbors, sigma
        self.rebalance = rebalance and kind == "classification"
        self.prior_sigma, self.prior_images = prior_sigma, prior_images

    def __repr__(self) -> str:
        return f"ColorObjective({self.__dict__})"

    @property
    def num_outputs(self) -> int:
        return color.NUM_BINS if self.kind == "classification" else 2

    @property
    def variant(self) -> str:
        """The paper's name of the ablation row."""
        if self.kind == "regression":
            return "l2"
        return "full" if self.rebalance else "class"

    def loss(self, out: Tensor, ab: Tensor, bin_weights: Tensor | None) -> tuple[Tensor, Tensor]:
        """(loss to optimise, unweighted loss to log). out: N x C x h x w at the ab grid size."""
        if self.kind == "regression":
            loss = l2_regression(out, ab)
            return loss, loss
        idx, w = color.soft_encode(ab, self.neighbors, self.sigma)
        ce = soft_cross_entropy_map(out, idx, w)  # one log-softmax serves both values
        if not self.rebalance or bin_weights is None:
            return ce.mean(), ce.mean().detach()
        pw = color.pixel_weights(ab, idx[:, 0], bin_weights)
        return (ce * pw).mean(), ce.mean().detach()

    def decode(self, out: Tensor, T: float = 0.38) -> Tensor:
        return out if self.kind == "regression" else color.annealed_mean(out, T)


class ColorizationPretext(pl.LightningModule):
    """AlexNet trunk + 1x1 fc8 head predicting ab (classes or values) from L - 50.

    Args:
        trunk: built backbone (``backbone`` group) with ``in_channels == 1``.
        objective: built ``pretext.objective``.
        optimizer: partial optimiser factory taking the parameters.
        scheduler: partial LR-scheduler factory taking the optimiser (stepped per iteration), or None.
        prior: 313-bin empirical prior of the training set (needed when rebalancing).
        ab_stride: decimation of the ab target grid (8 for the AlexNet net, 4 for the VGG net).
        temperature: annealed-mean T of the pictures and the validation ab error.
        channels_last: NHWC memory format for the convolutions.
        input_space: always "L" (kept as an argument so every pretext declares what it feeds).
    """

    def __init__(self, trunk: nn.Module, objective: ColorObjective, optimizer: Callable[..., Any],
                 scheduler: Callable[..., Any] | None = None, prior: Tensor | None = None,
                 ab_stride: int = 8, temperature: float = 0.38, channels_last: bool = True,
                 input_space: str = "L") -> None:
        super().__init__()
        if input_space != "L":
            raise ConfigError(f"pretext.input_space: colorization predicts ab from L, got {input_space!r}")
        if getattr(trunk, "in_channels", 1) != 1:
            raise ConfigError("backbone.in_channels: colorization predicts ab from L, expected 1")
        common.check_trunk(trunk, "L")
        self.trunk, self.objective = trunk, objective
        self.head = nn.Conv2d(trunk.out_channels, objective.num_outputs, 1)  # fc8
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.ab_stride, self.temperature, self.channels_last = ab_stride, temperature, channels_last
        if objective.rebalance and prior is None:
            raise ConfigError("pretext.objective.rebalance=true needs the training set's ab prior")
        weights = color.rebalance_weights(prior, objective.lam) if prior is not None else torch.ones(color.NUM_BINS)
        self.register_buffer("bin_weights", weights.float())
        self.skips = SkipCounter()
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """uint8 N x 3 x H x W -> (prediction at the ab grid N x C x h x w, ab N x 2 x h x w, L N x 1 x H x W)."""
        L, ab = color.lab_from_uint8(images, self.ab_stride)
        x = L - 50.0
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = resize_to(self.head(self.trunk(x)), tuple(ab.shape[-2:]))
        return out, ab, L

    @staticmethod
    def data_arguments(datamodule: Any, cache_dir: str | Path, arguments: dict[str, Any]) -> dict[str, Any]:
        """The training set's ab prior, which a rebalancing objective needs (see `common`)."""
        objective = arguments["objective"]
        if not objective.rebalance:
            return {}
        return {"prior": training_prior(datamodule, cache_dir, arguments["ab_stride"], objective.prior_sigma,
                                        objective.prior_images)}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any] | None:
        images = common.batch_images(self, batch)
        if images is None:  # every file in the batch was unreadable
            return None
        out, ab, L = self(images)
        loss, plain = self.objective.loss(out, ab, self.bin_weights)
        common.check_finite(loss, self.global_step)
        self.log("pretrain/loss", loss, prog_bar=True)
        self.log("pretrain/loss_unweighted", plain)
        self.log("pretrain/skipped_images", float(self.skips.count))
        return {"loss": loss, "samples": (L, out.detach(), ab)}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any] | None:
        images = common.batch_images(self, batch)
        if images is None:
            return None
        out, ab, L = self(images)
        loss, plain = self.objective.loss(out, ab, self.bin_weights)
        err = (self.objective.decode(out.float(), self.temperature) - ab).norm(dim=1).mean()
        n = images.shape[0]
        self.log("pretrain/val_loss", loss, batch_size=n, sync_dist=True)
        self.log("pretrain/val_ab_error", err, batch_size=n, sync_dist=True)
        # the grey prediction (ab = 0) as a reference point for the error above
        self.log("pretrain/val_ab_error_grey", ab.norm(dim=1).mean(), batch_size=n, sync_dist=True)
        return {"samples": (L, out, ab)}

    @torch.no_grad()
    def colorize(self, images: Tensor, T: float | None = None) -> Tensor:
        """uint8 N x 3 x H x W -> predicted sRGB N x 3 x H x W in [0,1], L kept at full resolution."""
        out, ab, L = self(images)
        ab_hat = self.objective.decode(out.float(), self.temperature if T is None else T)
        ab_full = F.interpolate(ab_hat, size=L.shape[-2:], mode="bilinear", align_corners=False)
        return color.lab_to_rgb(torch.cat([L, ab_full], dim=1))

    def save_samples(self, L: Tensor, out: Tensor, ab: Tensor, tag: str) -> Path | None:
        """samples/<tag>.png: grey input | colorization | ground truth of the first 8 images."""
        root = common.samples_dir(self)
        if root is None:
            return None
        ab_hat = self.objective.decode(out.detach().float()[:8], self.temperature)
        path = save_colorization_grid(L[:8], ab_hat, ab[:8], root / f"{tag}.png")
        common.log_image(self, "pretrain/samples", path)
        return path

    @torch.no_grad()
    def final_samples(self, images: Tensor) -> Path | None:
        """Colorizations of the given uint8 images, written as samples/final.png."""
        out, ab, L = self(images)
        return self.save_samples(L, out, ab, tag="final")

    def configure_optimizers(self) -> Any:
        return common.configure_optimizers(self.parameters(), self.optimizer_factory, self.scheduler_factory)

    @property
    def checkpoint_meta(self) -> dict[str, Any]:
        """What any tool needs to rebuild and feed the trunk (stored in every checkpoint)."""
        return common.trunk_meta(self.trunk, "colorization", self.objective.variant,
                                 num_outputs=self.objective.num_outputs, ab_stride=self.ab_stride)


def training_prior(datamodule: Any, cache_dir: str | Path, ab_stride: int, sigma: float | None,
                   images: int | None = None) -> Tensor:
    """`dataset_prior` of the datamodule's train split, on its first ``images`` images (whole
    batches, at least one; None = all of them)."""
    batches = datamodule.eval_train_dataloader()
    if images:
        batches = (b for _, b in zip(range(max(1, images // datamodule.batch_size)), batches))
    return dataset_prior(batches, f"{datamodule.fingerprint}-n{images}", cache_dir, ab_stride, sigma)


def dataset_prior(batches: Any, fingerprint: str, cache_dir: str | Path, ab_stride: int,
                  sigma: float | None) -> Tensor:
    """The training set's 313-bin ab prior, computed once per (dataset, stride, sigma) and cached.

    batches: iterable of loader batches {"image": uint8 N x 3 x H x W}.
    """
    name = f"prior-{fingerprint}-stride{ab_stride}-sigma{sigma}.pt"
    ab_iter = (color.lab_from_uint8(b["image"], ab_stride)[1] for b in batches if b["image"].numel())
    return color.empirical_prior(ab_iter, sigma=sigma, cache_file=Path(cache_dir) / name)
