"""Context encoder (Pathak, Krähenbühl, Donahue, Darrell, Efros 2016): inpaint a missing region.

Encoder = the trunk up to pool5 (the features that are evaluated), then a channel-wise fully
connected layer (each channel its own hw x hw linear map: information spreads across the whole
image without the parameters of a full fc layer) followed by a 1x1 convolution across channels
(Pathak's stride-1 convolution), BN and ReLU. Decoder = up-convolutions back to the image, tanh.

What the encoder sees: the image (``trunk_input``) with the *hidden hole* set to 0, the dataset
mean after normalisation. As in the released code (``overlapPred = 4``) the hole is the predicted
region (the mask) shrunk by ``overlap`` pixels, so a border ring of the region is visible context
and is still predicted, with ``overlap_weight`` (10x) weight.

Differences from the paper, on purpose:

* the network reconstructs the whole image and the loss counts only the mask region (weights 0
  outside); Pathak's centre model predicted just the 64x64 centre (its decoder output *was* the
  region), which is the same objective for the centre mask but also serves block and region masks;
* L2 normalisation: sum over pixels of ``weight * sum_channels (pred - target)^2`` divided by the
  sum of the weights over the batch. The released code averaged the weighted squared error over
  every element of the 3 x 64 x 64 crop; both are a fixed multiple of each other for a fixed mask
  geometry, ours keeps the scale independent of the mask's size and shape;
* the adversarial branch (``adversarial_weight > 0``, 0.001 in the paper: total = 0.999 rec + 0.001
  adv) scores the composite image (context from the target, prediction inside the mask) rather than
  the cropped centre, so it works for every mask kind. For the AlexNet feature-learning results the
  paper used the L2 loss alone (the adversarial loss did not converge), hence the default 0.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_bench.errors import ConfigError
from ssl_bench.models.inputs import RGB_MEAN, trunk_input
from ssl_bench.pretext.common import (
    SkipCounter,
    batch_images,
    check_finite,
    check_trunk,
    configure_optimizers,
    log_image,
    pool5,
    pool5_shape,
    samples_dir,
    save_grid,
    trunk_meta,
)
from ssl_bench.pretext.masks import MASK_KINDS, input_hole, loss_weights, make_masks

__all__ = ["ChannelwiseFC", "ContextEncoderPretext", "masked_l2", "dcgan_discriminator"]

VAL_SEED = 20160425  # validation masks come from this seed (+ batch index): comparable across epochs


class ChannelwiseFC(nn.Module):
    """Per-channel fully connected layer: channel c maps its h*w values by its own hw x hw matrix.

    weight: C x hw_in x hw_out, bias: C x hw_out, both initialised like ``nn.Linear(hw, hw)``.
    """

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.height, self.width = height, width
        hw = height * width
        self.weight = nn.Parameter(torch.empty(channels, hw, hw))
        self.bias = nn.Parameter(torch.empty(channels, hw))
        bound = 1.0 / math.sqrt(hw)  # nn.Linear's kaiming_uniform(a=sqrt(5)) and bias bound
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """N x C x h x w -> N x C x h x w."""
        n, c, h, w = x.shape
        y = torch.einsum("nci,cij->ncj", x.reshape(n, c, h * w), self.weight) + self.bias
        return y.view(n, c, h, w)


def up_decoder(in_channels: int, widths: Sequence[int], out_channels: int = 3) -> nn.Sequential:
    """``len(widths) + 1`` stages of ConvTranspose2d(4, stride 2, pad 1), each doubling the size:
    BN + ReLU after every hidden stage, the last to ``out_channels`` followed by tanh."""
    layers: list[nn.Module] = []
    cin = in_channels
    for w in widths:
        layers += [nn.ConvTranspose2d(cin, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        cin = w
    layers += [nn.ConvTranspose2d(cin, out_channels, 4, 2, 1), nn.Tanh()]
    return nn.Sequential(*layers)


def dcgan_discriminator(image_size: int, width: int = 64) -> nn.Sequential:
    """DCGAN discriminator on 3 x S x S images in [-1, 1]: stride-2 4x4 convolutions (BN + LeakyReLU
    0.2, none on the first) halving the size down to <= 4, then one convolution over what is left
    -> one logit per image (N)."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
    size, c = image_size // 2, width
    while size > 4:
        cout = min(2 * c, 8 * width)
        layers += [nn.Conv2d(c, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]
        size, c = size // 2, cout
    layers += [nn.Conv2d(c, 1, max(size, 1)), nn.Flatten(0)]
    return nn.Sequential(*layers)


def masked_l2(pred: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """sum(weights * sum_channels (pred - target)^2) / sum(weights), over the whole batch.

    pred, target: N x 3 x H x W; weights: N x 1 x H x W (`loss_weights`). Computed in float32.
    """
    err = (pred.float() - target.float()).pow(2).sum(1, keepdim=True)
    return (weights * err).sum() / weights.sum().clamp_min(1e-12)


class ContextEncoderPretext(pl.LightningModule):
    """Trunk (to pool5) + channel-wise fc + up-convolution decoder, trained to inpaint masked regions.

    Args:
        trunk: built backbone whose ``input_space`` matches ``input_space`` (AlexNet: "rgb").
        optimizer: partial optimiser factory for trunk + fc + decoder (released code: Adam lr 2e-4,
            betas (0.5, 0.999), batch 64).
        scheduler: partial LR-scheduler factory (stepped per iteration), or None.
        input_space: how the uint8 images are fed to the trunk ("rgb"; "L" also works).
        image_size: side of the (square) training crops; must equal ``data.crop_size`` (released code
            128, centre hole 64).
        mask: "center", "random_block" or "random_region" (see `ssl_bench.pretext.masks`).
        overlap: pixels of the predicted region's border that stay visible to the encoder (4).
        overlap_weight: L2 weight of that border relative to the hidden hole (10).
        bottleneck_channels: output channels of the 1x1 convolution after the channel-wise fc
            (None = conv5's width).
        decoder_widths: channels of the hidden up-convolution stages; the decoder has one more stage
            (to 3 channels) and needs ``ceil(log2(image_size / pool5 size))`` stages in all. None =
            conv5's width halved per stage ``[w5, w5//2, ...]`` (at least 16).
        adversarial_weight: weight of the adversarial loss (0 = L2 alone, the paper's AlexNet
            features; 0.001 = the paper's 0.999 / 0.001 joint loss, with manual optimisation).
        discriminator_optimizer: partial optimiser factory of the discriminator (None = Adam lr
            2e-4, betas (0.5, 0.999)).
        channels_last: NHWC memory format for the convolutions.
    """

    def __init__(self, trunk: nn.Module, optimizer: Callable[..., Any],
                 scheduler: Callable[..., Any] | None = None, input_space: str = "rgb",
                 image_size: int = 128, mask: str = "center", overlap: int = 4,
                 overlap_weight: float = 10.0, bottleneck_channels: int | None = None,
                 decoder_widths: Sequence[int] | None = None, adversarial_weight: float = 0.0,
                 discriminator_optimizer: Callable[..., Any] | None = None, channels_last: bool = True) -> None:
        super().__init__()
        check_trunk(trunk, input_space)
        if mask not in MASK_KINDS:
            raise ConfigError(f"pretext.mask: expected one of {list(MASK_KINDS)}, got {mask!r}")
        if not 0.0 <= adversarial_weight < 1.0:
            raise ConfigError(f"pretext.adversarial_weight: expected a value in [0, 1), got {adversarial_weight}")
        if overlap < 0:
            raise ConfigError(f"pretext.overlap: expected >= 0 pixels, got {overlap}")
        self.trunk = trunk
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.input_space, self.image_size, self.mask_kind = input_space, int(image_size), mask
        self.overlap, self.overlap_weight = int(overlap), float(overlap_weight)
        self.adversarial_weight, self.channels_last = float(adversarial_weight), channels_last

        c5 = trunk.widths[-1]
        _, h, w = pool5_shape(self.trunk, self.image_size)
        self.pool5_size = (h, w)
        bottleneck = bottleneck_channels or c5
        self.channel_fc = ChannelwiseFC(c5, h, w)
        self.bottleneck = nn.Sequential(nn.Conv2d(c5, bottleneck, 1, bias=False), nn.BatchNorm2d(bottleneck),
                                        nn.ReLU(inplace=True))
        stages = max(1, math.ceil(math.log2(self.image_size / min(h, w))))
        if decoder_widths is None:
            decoder_widths = [max(16, c5 >> k) for k in range(stages - 1)]
        elif len(decoder_widths) != stages - 1:
            raise ConfigError(f"pretext.decoder_widths: pool5 is {h}x{w} for image_size={self.image_size}, "
                              f"so the decoder needs {stages} up-convolutions = {stages - 1} hidden widths; "
                              f"got {list(decoder_widths)}")
        self.decoder_widths = [int(v) for v in decoder_widths]
        self.decoder = up_decoder(bottleneck, self.decoder_widths)

        self.discriminator: nn.Module | None = None
        self.discriminator_factory = discriminator_optimizer or functools.partial(
            torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999))
        if self.adversarial_weight > 0:
            self.discriminator = dcgan_discriminator(self.image_size, max(16, c5 // 4))
            self.automatic_optimization = False
        self.skips = SkipCounter()
        if channels_last:
            self.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------------------------ network

    def encode(self, x: Tensor) -> Tensor:
        """Trunk up to pool5: N x C_in x S x S -> N x C5 x h x w."""
        return pool5(self.trunk, x)

    def forward(self, x: Tensor) -> Tensor:
        """Encoder input (hole = 0) N x C_in x S x S -> reconstruction N x 3 x S x S in [-1, 1]."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        z = self.bottleneck(self.channel_fc(self.encode(x)))
        out = self.decoder(z)
        if out.shape[-1] != self.image_size or out.shape[-2] != self.image_size:
            out = F.interpolate(out, size=(self.image_size, self.image_size), mode="bilinear",
                                align_corners=False)
        return out

    # ----------------------------------------------------------------------------------- pretext

    def check_size(self, images: Tensor) -> None:
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ConfigError(f"pretext.image_size={self.image_size} but the batch is "
                              f"{images.shape[-2]}x{images.shape[-1]}; set pretext.image_size equal to "
                              f"data.crop_size (square crops)")

    def encoder_input(self, images: Tensor, hole: Tensor) -> Tensor:
        """uint8 N x 3 x S x S, bool hole N x 1 x S x S -> trunk input with the hole at 0 (the mean)."""
        return trunk_input(images, self.input_space).masked_fill(hole, 0.0)

    def inpaint(self, images: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """uint8 N x 3 x S x S -> (prediction N x 3 x S x S, target in [-1, 1], bool mask N x 1 x S x S,
        loss weights N x 1 x S x S). Masks come from ``generator`` (None = the global RNG)."""
        self.check_size(images)
        mask = make_masks(self.mask_kind, images.shape[0], self.image_size, generator, device=images.device)
        weights = loss_weights(mask, self.overlap, self.overlap_weight)
        pred = self(self.encoder_input(images, input_hole(mask, self.overlap)))
        target = images.float() / 127.5 - 1.0
        return pred, target, mask, weights

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any] | None:
        images = batch_images(self, batch)
        if images is None:  # every file in the batch was unreadable
            return None
        pred, target, mask, weights = self.inpaint(images)
        rec = masked_l2(pred, target, weights)
        if self.discriminator is None:
            loss = rec
            check_finite(loss, self.global_step)
        else:
            loss = self._adversarial_step(pred, target, mask, rec)
        self.log("pretrain/loss", loss, prog_bar=True)
        self.log("pretrain/rec_loss", rec)
        self.log("pretrain/skipped_images", float(self.skips.count))
        return {"loss": loss, "samples": (images, mask, pred.detach())}

    def _adversarial_step(self, pred: Tensor, target: Tensor, mask: Tensor, rec: Tensor) -> Tensor:
        """One generator step on (1 - a) rec + a adv, then one discriminator step (manual optimisation)."""
        opt_g, opt_d = self.optimizers()
        composite = torch.where(mask, pred.float(), target)  # context from the image, prediction inside
        logits = self.discriminator(composite)
        adv = F.binary_cross_entropy_with_logits(logits.float(), torch.ones_like(logits, dtype=torch.float32))
        a = self.adversarial_weight
        loss = (1.0 - a) * rec + a * adv
        check_finite(loss, self.global_step)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt_g.step()

        real, fake = self.discriminator(target), self.discriminator(composite.detach())
        disc = 0.5 * (F.binary_cross_entropy_with_logits(real.float(), torch.ones_like(real, dtype=torch.float32))
                      + F.binary_cross_entropy_with_logits(fake.float(), torch.zeros_like(fake, dtype=torch.float32)))
        check_finite(disc, self.global_step, "pretrain/disc_loss")
        opt_d.zero_grad(set_to_none=True)  # also drops what the generator's backward left on D
        self.manual_backward(disc)
        opt_d.step()
        schedulers = self.lr_schedulers()
        for sch in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            sch.step()
        self.log("pretrain/adv_loss", adv)
        self.log("pretrain/disc_loss", disc)
        return loss.detach()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any] | None:
        images = batch_images(self, batch)
        if images is None:
            return None
        gen = torch.Generator(device=images.device).manual_seed(VAL_SEED + batch_idx)
        pred, target, mask, weights = self.inpaint(images, gen)
        self.log("pretrain/val_loss", masked_l2(pred, target, weights), batch_size=images.shape[0],
                 sync_dist=True)
        return {"samples": (images, mask, pred)}

    # ----------------------------------------------------------------------------------- samples

    def sample_rows(self, images: Tensor, mask: Tensor, pred: Tensor, k: int = 8) -> Tensor:
        """Rows of k images in [0, 1]: what the encoder sees (hole in the mean colour), the
        reconstruction composited into the context, the original. -> 3k x 3 x S x S."""
        k = min(k, images.shape[0])
        orig = images[:k].float() / 255.0
        fill = (torch.tensor(RGB_MEAN, device=orig.device) if self.input_space == "rgb"
                else torch.full((3,), 0.5, device=orig.device)).view(1, 3, 1, 1)
        seen = torch.where(input_hole(mask[:k], self.overlap), fill, orig)
        composite = torch.where(mask[:k], (pred[:k].detach().float() + 1.0) / 2.0, orig)
        return torch.cat([seen, composite, orig])

    def save_samples(self, images: Tensor, mask: Tensor, pred: Tensor, tag: str) -> Path | None:
        """samples/<tag>.png: the rows of `sample_rows` for the first 8 images."""
        root = samples_dir(self)
        if root is None:
            return None
        rows = self.sample_rows(images, mask, pred)
        path = save_grid(rows, root / f"{tag}.png", ncol=rows.shape[0] // 3)
        log_image(self, "pretrain/inpainting", path)
        return path

    @torch.no_grad()
    def final_samples(self, images: Tensor) -> Path | None:
        """samples/final.png for the given uint8 images (validation masks), or None outside a Trainer."""
        root = samples_dir(self)
        if root is None or images.shape[0] == 0:
            return None
        gen = torch.Generator(device=images.device).manual_seed(VAL_SEED)
        pred, _, mask, _ = self.inpaint(images[:8], gen)
        return save_grid(self.sample_rows(images, mask, pred), root / "final.png", ncol=min(8, images.shape[0]))

    # --------------------------------------------------------------------------- optimisers, meta

    def configure_optimizers(self) -> Any:
        params = [p for n, p in self.named_parameters() if not n.startswith("discriminator.")]
        gen = configure_optimizers(params, self.optimizer_factory, self.scheduler_factory)
        if self.discriminator is None:
            return gen
        gen = gen if isinstance(gen, dict) else {"optimizer": gen}
        return gen, {"optimizer": self.discriminator_factory(self.discriminator.parameters())}

    @property
    def checkpoint_meta(self) -> dict[str, Any]:
        return trunk_meta(self.trunk, "context_encoder", self.mask_kind, image_size=self.image_size,
                          overlap=self.overlap, adversarial_weight=self.adversarial_weight)
