"""Split-brain autoencoder (Zhang, Isola, Efros, CVPR 2017): two cross-channel encoders in one net.

The trunk is a `SplitBrainAlexNet`: its L half predicts ab (colorization: the 313 ab bins,
soft-encoded and class-rebalanced with the colour science of `ssl_bench.color` and the
colorization pretext's `ColorObjective`), its ab half predicts L (classification over
``l_bins`` equal-width lightness bins). The two cross-entropies are summed: the paper's best
variant, classification for both directions (the released model ``model_splitbrainauto_clcl``).

Both targets sit on the decimated grid of the colorization net (every ``ab_stride``-th pixel);
each half's fc7 map goes through its own 1x1 classifier (fc8) and is resized to that grid.
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
from ssl_bench.models.inputs import L_CENTER
from ssl_bench.pretext import common
from ssl_bench.pretext.colorization import ColorizationPretext, ColorObjective
from ssl_bench.pretext.common import SkipCounter
from ssl_bench.pretext.losses import resize_to

__all__ = ["SplitBrainPretext", "lightness_bins", "lightness_from_logits"]

L_MAX = 100.0


def lightness_bins(L: Tensor, bins: int) -> Tensor:
    """Quantise lightness into ``bins`` equal-width classes over [0, 100].

    L: float N x 1 x h x w in 0..100 -> int64 N x h x w in 0..bins-1 (100 falls in the last bin).
    """
    return (L[:, 0] * (bins / L_MAX)).floor().clamp_(0, bins - 1).long()


def lightness_from_logits(logits: Tensor) -> Tensor:
    """Expected lightness under the predicted distribution (bin centres): N x Q x h x w -> N x 1 x h x w."""
    q = logits.shape[1]
    centres = (torch.arange(q, device=logits.device, dtype=torch.float32) + 0.5) * (L_MAX / q)
    return torch.einsum("nqhw,q->nhw", F.softmax(logits.float(), 1), centres)[:, None]


class SplitBrainPretext(pl.LightningModule):
    """A `SplitBrainAlexNet` with two fc8 heads: L half -> 313 ab bins, ab half -> ``l_bins`` L bins.

    Args:
        trunk: a built `ssl_bench.models.split_brain.SplitBrainAlexNet` (input space "lab").
        objective: the ab direction's `ColorObjective` (classification; rebalancing as configured).
        optimizer, scheduler: partial factories (scheduler stepped per iteration, or None).
        prior: 313-bin empirical ab prior of the training set (needed when rebalancing).
        l_bins: number of lightness classes of the ab -> L direction.
        ab_stride: decimation of both target grids (8: the AlexNet colorization net).
        temperature: annealed-mean T of the pictures and the validation ab error.
        channels_last: NHWC memory format for the convolutions.
        input_space: always "lab".
    """

    def __init__(self, trunk: nn.Module, objective: ColorObjective, optimizer: Callable[..., Any],
                 scheduler: Callable[..., Any] | None = None, prior: Tensor | None = None, l_bins: int = 50,
                 ab_stride: int = 8, temperature: float = 0.38, channels_last: bool = True,
                 input_space: str = "lab") -> None:
        super().__init__()
        if input_space != "lab" or getattr(trunk, "input_space", None) != "lab" or not hasattr(trunk, "halves"):
            raise ConfigError("pretext=split_brain needs backbone._target_=ssl_bench.models.split_brain."
                             "SplitBrainAlexNet and input_space 'lab' (experiment=split_brain or "
                             f"experiment=demo_split_brain set both); got a {type(trunk).__name__} with input "
                             f"space {getattr(trunk, 'input_space', None)!r}")
        if objective.kind != "classification":
            raise ConfigError("pretext.objective.kind: the split-brain autoencoder classifies ab (the paper's "
                             f"best variant), expected 'classification', got {objective.kind!r}")
        if l_bins < 2:
            raise ConfigError(f"pretext.l_bins: expected >= 2 lightness classes, got {l_bins}")
        if objective.rebalance and prior is None:
            raise ConfigError("pretext.objective.rebalance=true needs the training set's ab prior")
        self.trunk, self.objective, self.l_bins = trunk, objective, int(l_bins)
        half = trunk.out_channels // 2
        self.head_ab = nn.Conv2d(half, color.NUM_BINS, 1)  # fc8 of the L half
        self.head_l = nn.Conv2d(half, self.l_bins, 1)      # fc8 of the ab half
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.ab_stride, self.temperature, self.channels_last = ab_stride, temperature, channels_last
        weights = color.rebalance_weights(prior, objective.lam) if prior is not None else torch.ones(color.NUM_BINS)
        self.register_buffer("bin_weights", weights.float())
        self.skips = SkipCounter()
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """uint8 N x 3 x H x W -> {"ab_logits": N x 313 x h x w, "l_logits": N x l_bins x h x w (the
        decimated grid), "ab": N x 2 x h x w, "L": N x 1 x H x W (full resolution), "L_grid": N x 1 x h x w}."""
        lab = color.rgb_to_lab(images)
        x = torch.cat([lab[:, :1] - L_CENTER, lab[:, 1:]], 1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        from_l, from_ab = self.trunk.half_features(x, ("fc7",))
        s = self.ab_stride
        ab, L_grid = lab[:, 1:, ::s, ::s].contiguous(), lab[:, :1, ::s, ::s].contiguous()
        size = tuple(ab.shape[-2:])
        return {"ab_logits": resize_to(self.head_ab(from_l["fc7"]), size),
                "l_logits": resize_to(self.head_l(from_ab["fc7"]), size),
                "ab": ab, "L": lab[:, :1], "L_grid": L_grid}

    def losses(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        """{"loss": ab + L, "loss_ab": the ab objective (rebalanced if configured), "loss_ab_unweighted",
        "loss_L": cross-entropy over the lightness bins}."""
        loss_ab, plain_ab = self.objective.loss(out["ab_logits"], out["ab"], self.bin_weights)
        loss_l = F.cross_entropy(out["l_logits"].float(), lightness_bins(out["L_grid"], self.l_bins))
        return {"loss": loss_ab + loss_l, "loss_ab": loss_ab, "loss_ab_unweighted": plain_ab, "loss_L": loss_l}

    # the training set's ab prior for the L -> ab half's rebalancing: the colorization pretext's own
    data_arguments = staticmethod(ColorizationPretext.data_arguments)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any] | None:
        images = common.batch_images(self, batch)
        if images is None:  # every file in the batch was unreadable
            return None
        out = self(images)
        losses = self.losses(out)
        common.check_finite(losses["loss"], self.global_step)
        self.log("pretrain/loss", losses["loss"], prog_bar=True)
        for name in ("loss_ab", "loss_ab_unweighted", "loss_L"):
            self.log(f"pretrain/{name}", losses[name])
        self.log("pretrain/skipped_images", float(self.skips.count))
        return {"loss": losses["loss"], "samples": self._sample_material(out)}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any] | None:
        images = common.batch_images(self, batch)
        if images is None:
            return None
        out = self(images)
        losses = self.losses(out)
        n = images.shape[0]
        ab_err = (color.annealed_mean(out["ab_logits"].float(), self.temperature) - out["ab"]).norm(dim=1).mean()
        l_err = (lightness_from_logits(out["l_logits"]) - out["L_grid"]).abs().mean()
        self.log("pretrain/val_loss", losses["loss"], batch_size=n, sync_dist=True)
        self.log("pretrain/val_loss_L", losses["loss_L"], batch_size=n, sync_dist=True)
        self.log("pretrain/val_ab_error", ab_err, batch_size=n, sync_dist=True)
        self.log("pretrain/val_L_error", l_err, batch_size=n, sync_dist=True)
        return {"samples": self._sample_material(out)}

    @staticmethod
    def _sample_material(out: dict[str, Tensor], k: int = 8) -> tuple[Tensor, ...]:
        return (out["L"][:k], out["ab_logits"][:k].detach(), out["ab"][:k], out["l_logits"][:k].detach())

    def sample_rows(self, L: Tensor, ab_logits: Tensor, ab: Tensor, l_logits: Tensor) -> Tensor:
        """Rows of k images in [0, 1]: L with predicted ab (L half), the image, predicted L with the
        true ab (ab half). -> 3k x 3 x H x W."""
        size = L.shape[-2:]

        def up(x: Tensor) -> Tensor:
            return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)

        ab_hat = up(color.annealed_mean(ab_logits.float(), self.temperature))
        L_hat = up(lightness_from_logits(l_logits))
        return torch.cat([color.lab_to_rgb(torch.cat([L, ab_hat], 1)), color.lab_to_rgb(torch.cat([L, up(ab)], 1)),
                          color.lab_to_rgb(torch.cat([L_hat, up(ab)], 1))])

    def save_samples(self, L: Tensor, ab_logits: Tensor, ab: Tensor, l_logits: Tensor, tag: str) -> Path | None:
        """samples/<tag>.png: the rows of `sample_rows`."""
        root = common.samples_dir(self)
        if root is None:
            return None
        path = common.save_grid(self.sample_rows(L, ab_logits, ab, l_logits), root / f"{tag}.png", ncol=L.shape[0])
        common.log_image(self, "pretrain/cross_channel", path)
        return path

    @torch.no_grad()
    def final_samples(self, images: Tensor) -> Path | None:
        """samples/final.png for the given uint8 images, or None outside a Trainer."""
        return self.save_samples(*self._sample_material(self(images)), tag="final")

    def configure_optimizers(self) -> Any:
        return common.configure_optimizers(self.parameters(), self.optimizer_factory, self.scheduler_factory)

    @property
    def checkpoint_meta(self) -> dict[str, Any]:
        variant = None if self.objective.rebalance else "no_rebalance"
        return common.trunk_meta(self.trunk, "split_brain", variant, l_bins=self.l_bins, ab_stride=self.ab_stride)
