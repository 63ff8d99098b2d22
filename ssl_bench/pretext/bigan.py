"""BiGAN (Donahue, Krähenbühl, Darrell, ICLR 2017): adversarial feature learning.

A generator G maps a latent z ~ U[-1, 1]^d to images, an encoder E (the trunk plus a linear head)
maps images to latents, and a discriminator D tells the joint pairs (x, E(x)) from (G(z), z).
At the optimum E inverts G, so the trunk learns features from which the image can be generated.

The choices follow the authors' released code (jeffdonahue/bigan; docs/pretexts.md lists each
with its file): a 200-d uniform latent; the "generalized BiGAN" where E sees the crop at a higher
resolution (``data.crop_size``, 112 in the paper) than G produces and D reads (``image_size``,
64); DCGAN-style G and D with 5x5 (de)convolutions of stride 2, in which the latent enters every
hidden layer after the first as a learned per-channel bias (``apply_cond`` in net.py); D's
binary cross-entropy with each kind of pair weighted 1/2, and E and G trained together on the
flipped labels; G, E and D stepped simultaneously on each batch (Adam lr 2e-4, beta1 0.5, weight
decay 2.5e-5, in the configs).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_bench.errors import ConfigError
from ssl_bench.models.inputs import trunk_input
from ssl_bench.pretext import common
from ssl_bench.pretext.common import SkipCounter
from ssl_bench.pretext.losses import bigan_discriminator_loss, bigan_generator_loss

__all__ = ["BiGANPretext", "Generator", "JointDiscriminator", "mean_pairwise_distance"]

SAMPLE_SEED = 20170424  # the latents of the sample pictures: the same z at every step


def _stages(image_size: int) -> int:
    """Number of stride-2 stages between a 4x4 map and ``image_size`` (a power of two >= 8)."""
    stages = int(round(math.log2(image_size / 4)))
    if image_size < 8 or 4 * 2 ** stages != image_size:
        raise ConfigError(f"pretext.image_size: the generator and discriminator need a power of two >= 8, "
                          f"got {image_size}")
    return stages


def _dcgan_init(module: nn.Module) -> None:
    """N(0, 0.02) weights and zero biases (the released code's initialisation of every layer)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """z (N x d) -> images N x 3 x S x S in [-1, 1].

    A linear layer to (width * 2^(k-1)) x 4 x 4 (batch norm per unit, ReLU), then k - 1 hidden
    5x5 stride-2 transposed convolutions halving the channels (latent bias, batch norm, ReLU) and a
    last one to 3 channels, sigmoid rescaled to [-1, 1]; k = log2(S / 4).
    """

    def __init__(self, latent_dim: int, image_size: int, width: int = 64) -> None:
        super().__init__()
        k = _stages(image_size)
        chans = [width * 2 ** (k - 1 - i) for i in range(k)]  # 4x4, 8x8, ... maps before the last stage
        self.start_shape = (chans[0], 4, 4)
        self.project = nn.Linear(latent_dim, chans[0] * 16)
        self.project_norm = nn.BatchNorm1d(chans[0] * 16)  # per unit: the release's "bn_flat"
        self.ups = nn.ModuleList(nn.ConvTranspose2d(a, b, 5, 2, 2, output_padding=1) for a, b in zip(chans, chans[1:]))
        self.latent_bias = nn.ModuleList(nn.Linear(latent_dim, b) for b in chans[1:])
        self.norms = nn.ModuleList(nn.BatchNorm2d(b) for b in chans[1:])
        self.out = nn.ConvTranspose2d(chans[-1], 3, 5, 2, 2, output_padding=1)
        _dcgan_init(self)

    def forward(self, z: Tensor) -> Tensor:
        h = F.relu(self.project_norm(self.project(z))).view(-1, *self.start_shape)
        for up, bias, norm in zip(self.ups, self.latent_bias, self.norms):
            h = F.relu(norm(up(h) + bias(z)[:, :, None, None]))
        return 2.0 * torch.sigmoid(self.out(h)) - 1.0


class JointDiscriminator(nn.Module):
    """(images N x 3 x S x S in [-1, 1], latents N x d) -> N logits.

    k = log2(S / 4) 5x5 stride-2 convolutions doubling the channels from ``width`` (LeakyReLU 0.2;
    from the second on, the latent's learned per-channel bias and batch norm before it), then a
    linear logit on the 4x4 map.
    """

    def __init__(self, latent_dim: int, image_size: int, width: int = 64) -> None:
        super().__init__()
        k = _stages(image_size)
        chans = [3] + [width * 2 ** i for i in range(k)]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 5, 2, 2) for a, b in zip(chans, chans[1:]))
        self.latent_bias = nn.ModuleList(nn.Linear(latent_dim, b) for b in chans[2:])
        self.norms = nn.ModuleList(nn.BatchNorm2d(b) for b in chans[2:])
        self.logit = nn.Linear(chans[-1] * 16, 1)
        _dcgan_init(self)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        h = F.leaky_relu(self.convs[0](x), 0.2)
        for conv, bias, norm in zip(self.convs[1:], self.latent_bias, self.norms):
            h = F.leaky_relu(norm(conv(h) + bias(z)[:, :, None, None]), 0.2)
        return self.logit(h.flatten(1)).squeeze(1)


def mean_pairwise_distance(x: Tensor) -> Tensor:
    """Mean Euclidean distance between the distinct pairs of a batch: N x ... -> scalar (N >= 2)."""
    d = torch.cdist(x.flatten(1).float(), x.flatten(1).float())
    n = x.shape[0]
    return d.sum() / (n * (n - 1))


class BiGANPretext(pl.LightningModule):
    """Encoder (trunk to pool5 + linear head), generator and joint discriminator, with manual
    optimisation: one optimiser for the encoder and the generator together, one for D.

    Args:
        trunk: built backbone with ``input_space`` "rgb" (the encoder's body).
        optimizer: partial optimiser factory, used for both optimisers (released code: Adam lr 2e-4,
            beta1 0.5, weight decay 2.5e-5).
        scheduler: partial LR-scheduler factory (stepped per batch, for both optimisers), or None.
        input_space: "rgb".
        latent_dim: dimension of the uniform latent (200).
        image_size: side of G's output and D's input (64); D reads the crop resized to this size.
        encoder_size: side of the crops the encoder reads (= ``data.crop_size``; 112 in the
            generalized BiGAN, equal to ``image_size`` in the standard one).
        generator_width, discriminator_width: base widths of G and D (64 in the released code).
        channels_last: NHWC memory format for the trunk.
    """

    def __init__(self, trunk: nn.Module, optimizer: Callable[..., Any], scheduler: Callable[..., Any] | None = None,
                 input_space: str = "rgb", latent_dim: int = 200, image_size: int = 64, encoder_size: int = 112,
                 generator_width: int = 64,
                 discriminator_width: int = 64, channels_last: bool = True) -> None:
        super().__init__()
        common.check_trunk(trunk, input_space)
        if latent_dim < 1:
            raise ConfigError(f"pretext.latent_dim: expected >= 1, got {latent_dim}")
        self.trunk, self.input_space, self.latent_dim = trunk, input_space, int(latent_dim)
        self.image_size, self.channels_last = int(image_size), channels_last
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.generator = Generator(self.latent_dim, self.image_size, generator_width)
        self.discriminator = JointDiscriminator(self.latent_dim, self.image_size, discriminator_width)
        if encoder_size < self.image_size:
            raise ConfigError(f"pretext.encoder_size={encoder_size} (data.crop_size) is smaller than "
                              f"pretext.image_size={self.image_size}: the encoder reads at least G's resolution")
        self.encoder_size = int(encoder_size)
        # no bias: the released encoder's linear predictor has none (train_gan.py, --encode_out_bias off)
        pool5_features = math.prod(common.pool5_shape(self.trunk, self.encoder_size))
        self.encoder_head = nn.Linear(pool5_features, self.latent_dim, bias=False)
        _dcgan_init(self.encoder_head)
        self.register_buffer("sample_z", self._uniform(16, torch.Generator().manual_seed(SAMPLE_SEED)),
                             persistent=False)
        self.automatic_optimization = False
        self.skips = SkipCounter()
        if channels_last:
            self.trunk.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------------------------ network

    def _uniform(self, n: int, generator: torch.Generator | None = None, device: Any = None) -> Tensor:
        """n latents from U[-1, 1]^d."""
        return torch.rand(n, self.latent_dim, generator=generator, device=device) * 2.0 - 1.0

    def encode(self, images: Tensor) -> Tensor:
        """uint8 N x 3 x H x W (the full crop) -> latents N x d in (-1, 1).

        The head's output goes through 2 sigmoid - 1, as the released code maps the encoder's
        predictions to the uniform latent's range (dist.py, ``UniformDistribution.logits_to_sample``):
        D then judges E(x) and z on the same support, so it cannot tell them apart by range alone."""
        x = trunk_input(images, self.input_space)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        pool5 = common.pool5(self.trunk, x)
        return 2.0 * torch.sigmoid(self.encoder_head(pool5.flatten(1)).float()) - 1.0

    def discriminator_input(self, images: Tensor) -> Tensor:
        """uint8 N x 3 x H x W -> N x 3 x S x S in [-1, 1] at G's resolution (antialiased resize)."""
        x = images.float() / 127.5 - 1.0
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return x

    # ----------------------------------------------------------------------------------- training

    def forward_pairs(self, images: Tensor) -> dict[str, Tensor]:
        """uint8 N x 3 x H x W -> the pairs D judges: {"x": N x 3 x S x S, "z_hat": E(x) N x d,
        "fake": G(z) N x 3 x S x S, "z": N x d}."""
        if tuple(images.shape[-2:]) != (self.encoder_size, self.encoder_size):
            raise ConfigError(f"pretext.encoder_size={self.encoder_size} but the batch is {images.shape[-2]}x"
                              f"{images.shape[-1]}; set pretext.encoder_size equal to data.crop_size")
        z = self._uniform(images.shape[0], device=images.device)
        return {"x": self.discriminator_input(images), "z_hat": self.encode(images), "fake": self.generator(z), "z": z}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any] | None:
        images = common.batch_images(self, batch)
        if images is None:  # every file in the batch was unreadable
            return None
        opt_ge, opt_d = self.optimizers()
        p = self.forward_pairs(images)
        # one pass of D over both kinds of pair serves both losses, as in the released code (the
        # "opp_" losses reuse D's outputs): both updates start from the same point
        real, fake = self.discriminator(p["x"], p["z_hat"]), self.discriminator(p["fake"], p["z"])
        gen, disc = bigan_generator_loss(real, fake), bigan_discriminator_loss(real, fake)
        common.check_finite(gen, self.global_step)
        common.check_finite(disc, self.global_step, "pretrain/disc_loss")
        opt_ge.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)
        ge_params = [q for group in opt_ge.param_groups for q in group["params"] if q.requires_grad]
        d_params = [q for group in opt_d.param_groups for q in group["params"] if q.requires_grad]
        # each loss reaches only its own side's parameters (D's loss does not flow back into E or G)
        self.manual_backward(gen, inputs=ge_params, retain_graph=True)
        self.manual_backward(disc, inputs=d_params)
        opt_ge.step()
        opt_d.step()
        self._step_schedulers()
        self.log("pretrain/loss", gen.detach(), prog_bar=True)
        self.log("pretrain/disc_loss", disc.detach(), prog_bar=True)
        return {"loss": gen.detach(), "samples": (images[:8], p["z_hat"][:8].detach())}

    def _step_schedulers(self) -> None:
        schedulers = self.lr_schedulers()
        for sch in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            sch.step()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any] | None:
        images = common.batch_images(self, batch)
        if images is None:
            return None
        p = self.forward_pairs(images)
        n = images.shape[0]
        real, fake = self.discriminator(p["x"], p["z_hat"]), self.discriminator(p["fake"], p["z"])
        recon = self.generator(p["z_hat"])
        self.log("pretrain/val_loss", bigan_generator_loss(real, fake), batch_size=n, sync_dist=True)
        self.log("pretrain/val_disc_loss", bigan_discriminator_loss(real, fake), batch_size=n, sync_dist=True)
        # the released code's EGr / EGr_b: ||x - G(E(x))|| against the same with another image x'
        err = (p["x"] - recon).flatten(1).norm(dim=1).mean()
        base = (p["x"].roll(1, 0) - recon).flatten(1).norm(dim=1).mean()
        self.log("pretrain/val_recon_error", err, batch_size=n, sync_dist=True)
        self.log("pretrain/val_recon_baseline", base, batch_size=n, sync_dist=True)
        if n > 1:  # sample diversity relative to the data's: near 0 means collapse
            spread = mean_pairwise_distance(p["fake"]) / mean_pairwise_distance(p["x"]).clamp_min(1e-6)
            self.log("pretrain/val_sample_spread", spread, batch_size=n, sync_dist=True)
        return {"samples": (images[:8], p["z_hat"][:8])}

    # ----------------------------------------------------------------------------------- samples

    @torch.no_grad()
    def sample_rows(self, images: Tensor, z_hat: Tensor) -> Tensor:
        """Rows in [0, 1]: k images (at G's resolution), their reconstructions G(E(x)), then two rows
        of samples G(z) of fixed latents. -> (2k + 16) x 3 x S x S for k <= 8."""
        was = self.generator.training
        self.generator.eval()
        try:
            recon, samples = self.generator(z_hat.float()), self.generator(self.sample_z)
        finally:
            self.generator.train(was)
        rows = torch.cat([self.discriminator_input(images), recon])
        k = images.shape[0]
        return (torch.cat([rows, samples[: 2 * k]]) + 1.0) / 2.0

    def save_samples(self, images: Tensor, z_hat: Tensor, tag: str) -> Path | None:
        """samples/<tag>.png: images, reconstructions G(E(x)), samples G(z)."""
        root = common.samples_dir(self)
        if root is None:
            return None
        path = common.save_grid(self.sample_rows(images, z_hat), root / f"{tag}.png", ncol=images.shape[0])
        common.log_image(self, "pretrain/reconstructions_and_samples", path)
        return path

    @torch.no_grad()
    def final_samples(self, images: Tensor) -> Path | None:
        """samples/final.png for the given uint8 images, or None outside a Trainer."""
        return self.save_samples(images[:8], self.encode(images[:8]), tag="final")

    # --------------------------------------------------------------------------- optimisers, meta

    def configure_optimizers(self) -> Any:
        ge = [q for n, q in self.named_parameters() if not n.startswith("discriminator.")]
        specs = [common.configure_optimizers(ge, self.optimizer_factory, self.scheduler_factory),
                 common.configure_optimizers(self.discriminator.parameters(), self.optimizer_factory,
                                             self.scheduler_factory)]
        return [s if isinstance(s, dict) else {"optimizer": s} for s in specs]

    @property
    def checkpoint_meta(self) -> dict[str, Any]:
        return common.trunk_meta(self.trunk, "bigan", None, latent_dim=self.latent_dim, image_size=self.image_size)
