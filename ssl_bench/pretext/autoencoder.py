"""Autoencoder: the trunk plus a decoder that reconstructs the whole input image.

The published "Autoencoder" row (Split-Brain Table 4: cls 53.8, det 41.9, seg 25.2; cls fc6-8 16.0)
is the baseline of Pathak et al.'s context encoder paper (CVPR 2016, Table 2): the context
encoder's network (AlexNet encoder to pool5, channel-wise fully connected layer, up-convolution
decoder) trained to reconstruct the full image with no hole, L2 loss. This module is that network
(built from the context encoder's parts), with the whole image visible and every pixel scored.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_bench.errors import ConfigError
from ssl_bench.models.inputs import trunk_input
from ssl_bench.pretext import common
from ssl_bench.pretext.common import SkipCounter
from ssl_bench.pretext.context_encoder import ChannelwiseFC, up_decoder
from ssl_bench.pretext.losses import image_l2

__all__ = ["AutoencoderPretext"]


class AutoencoderPretext(pl.LightningModule):
    """Trunk (to pool5) + channel-wise fc + 1x1 bottleneck + up-convolution decoder -> the input image.

    Args:
        trunk: built backbone whose ``input_space`` matches ``input_space`` (AlexNet: "rgb").
        optimizer, scheduler: partial factories (scheduler stepped per iteration, or None).
        input_space: how the uint8 images are fed to the trunk ("rgb"; "L" also works: the target
            stays the RGB image).
        image_size: side of the square training crops (= ``data.crop_size``).
        bottleneck_channels: channels after the channel-wise fc (None = conv5's width).
        decoder_widths: hidden up-convolution widths (None = conv5's width halved per stage).
        channels_last: NHWC memory format for the convolutions.
    """

    def __init__(self, trunk: nn.Module, optimizer: Callable[..., Any], scheduler: Callable[..., Any] | None = None,
                 input_space: str = "rgb", image_size: int = 128, bottleneck_channels: int | None = None,
                 decoder_widths: Sequence[int] | None = None, channels_last: bool = True) -> None:
        super().__init__()
        common.check_trunk(trunk, input_space)
        self.trunk, self.input_space, self.image_size = trunk, input_space, int(image_size)
        self.optimizer_factory, self.scheduler_factory, self.channels_last = optimizer, scheduler, channels_last
        c5 = trunk.widths[-1]
        _, h, w = common.pool5_shape(self.trunk, self.image_size)
        bottleneck = bottleneck_channels or c5
        self.channel_fc = ChannelwiseFC(c5, h, w)
        self.bottleneck = nn.Sequential(nn.Conv2d(c5, bottleneck, 1, bias=False), nn.BatchNorm2d(bottleneck),
                                        nn.ReLU(inplace=True))
        stages = max(1, math.ceil(math.log2(self.image_size / min(h, w))))
        if decoder_widths is None:
            decoder_widths = [max(16, c5 >> k) for k in range(stages - 1)]
        elif len(decoder_widths) != stages - 1:
            raise ConfigError(f"pretext.decoder_widths: pool5 is {h}x{w} for image_size={self.image_size}, so the "
                             f"decoder needs {stages - 1} hidden widths; got {list(decoder_widths)}")
        self.decoder_widths = [int(v) for v in decoder_widths]
        self.decoder = up_decoder(bottleneck, self.decoder_widths)
        self.skips = SkipCounter()
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def encode(self, x: Tensor) -> Tensor:
        """Trunk up to pool5: N x C_in x S x S -> N x C5 x h x w."""
        return common.pool5(self.trunk, x)

    def forward(self, images: Tensor) -> Tensor:
        """uint8 N x 3 x S x S -> reconstruction N x 3 x S x S in [-1, 1]."""
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ConfigError(f"pretext.image_size={self.image_size} but the batch is {images.shape[-2]}x"
                             f"{images.shape[-1]}; set pretext.image_size equal to data.crop_size")
        x = trunk_input(images, self.input_space)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.decoder(self.bottleneck(self.channel_fc(self.encode(x))))
        if tuple(out.shape[-2:]) != (self.image_size, self.image_size):
            out = F.interpolate(out, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any] | None:
        images = common.batch_images(self, batch)
        if images is None:  # every file in the batch was unreadable
            return None
        pred = self(images)
        loss = image_l2(pred, images.float() / 127.5 - 1.0)
        common.check_finite(loss, self.global_step)
        self.log("pretrain/loss", loss, prog_bar=True)
        self.log("pretrain/skipped_images", float(self.skips.count))
        return {"loss": loss, "samples": (images[:8], pred[:8].detach())}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any] | None:
        images = common.batch_images(self, batch)
        if images is None:
            return None
        pred = self(images)
        self.log("pretrain/val_loss", image_l2(pred, images.float() / 127.5 - 1.0), batch_size=images.shape[0],
                 sync_dist=True)
        return {"samples": (images[:8], pred[:8])}

    def save_samples(self, images: Tensor, pred: Tensor, tag: str) -> Path | None:
        """samples/<tag>.png: the images above their reconstructions."""
        root = common.samples_dir(self)
        if root is None:
            return None
        rows = torch.cat([images.float() / 255.0, (pred.detach().float() + 1.0) / 2.0])
        path = common.save_grid(rows, root / f"{tag}.png", ncol=images.shape[0])
        common.log_image(self, "pretrain/reconstructions", path)
        return path

    @torch.no_grad()
    def final_samples(self, images: Tensor) -> Path | None:
        """samples/final.png for the given uint8 images, or None outside a Trainer."""
        return self.save_samples(images[:8], self(images[:8]), tag="final")

    def configure_optimizers(self) -> Any:
        return common.configure_optimizers(self.parameters(), self.optimizer_factory, self.scheduler_factory)

    @property
    def checkpoint_meta(self) -> dict[str, Any]:
        return common.trunk_meta(self.trunk, "autoencoder", None, image_size=self.image_size)
