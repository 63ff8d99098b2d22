"""Supervised pretraining: the same trunk trained on the dataset's labels (the upper-bound row)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_bench.errors import ConfigError, DataError
from ssl_bench.models.inputs import trunk_input
from ssl_bench.pretext import common
from ssl_bench.pretext.common import SkipCounter


class SupervisedPretext(pl.LightningModule):
    """Trunk (conv1..fc7) -> global average pool -> fc8 classifier, softmax cross-entropy.

    The classification AlexNet has fully connected fc6/fc7 on the 6x6 pool5 map; this trunk's fc6/fc7
    are convolutions (as in the colorization net), so their map is averaged before fc8. Every method
    then shares one trunk definition and the probes read the same layers.

    Args:
        trunk: built backbone; ``input_space`` says how uint8 images are fed ("rgb" by default).
        optimizer, scheduler: partial factories.
        num_classes: number of labels (`data_arguments` counts the data's class folders when None).
        label_smoothing: cross-entropy label smoothing (0 = the classic AlexNet recipe).
    """

    def __init__(self, trunk: nn.Module, optimizer: Callable[..., Any], num_classes: int,
                 scheduler: Callable[..., Any] | None = None, input_space: str = "rgb",
                 label_smoothing: float = 0.0, channels_last: bool = True) -> None:
        super().__init__()
        common.check_trunk(trunk, input_space)
        if not num_classes or num_classes < 2:
            raise ConfigError(f"pretext.num_classes: supervised pretraining needs >= 2 labels, got "
                              f"{num_classes} (use a labelled layout: data.layout=imagefolder)")
        self.trunk, self.input_space, self.num_classes = trunk, input_space, num_classes
        self.head = nn.Linear(trunk.out_channels, num_classes)  # fc8
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.label_smoothing, self.channels_last = label_smoothing, channels_last
        self.skips = SkipCounter()
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, images: Tensor) -> Tensor:
        """uint8 N x 3 x H x W -> logits N x num_classes."""
        x = trunk_input(images, self.input_space)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.trunk(x).mean(dim=(2, 3)))

    @staticmethod
    def data_arguments(datamodule: Any, cache_dir: str | Path, arguments: dict[str, Any]) -> dict[str, Any]:
        """num_classes=None: the number of class folders of the data (see `common`)."""
        if arguments.get("num_classes") is not None:
            return {}
        if not datamodule.num_classes:
            raise DataError(f"pretext=supervised needs labels; data.root={datamodule.root} has no class "
                            f"folders (data.layout=imagefolder)")
        return {"num_classes": datamodule.num_classes}

    def _labels(self, batch: dict[str, Any]) -> Tensor:
        labels = batch["label"]
        if labels.numel() and int(labels.min()) < 0:
            raise DataError("pretext=supervised: the data has no labels (data.layout=folder); "
                            "use a class-folder layout (data.layout=imagefolder)")
        return labels

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any] | None:
        images = common.batch_images(self, batch)
        if images is None:
            return None
        labels = self._labels(batch)
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        common.check_finite(loss, self.global_step)
        self.log("pretrain/loss", loss, prog_bar=True)
        self.log("pretrain/top1", (logits.argmax(1) == labels).float().mean() * 100)
        self.log("pretrain/skipped_images", float(self.skips.count))
        return {"loss": loss}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = common.batch_images(self, batch)
        if images is None:
            return
        labels = self._labels(batch)
        logits = self(images)
        n = images.shape[0]
        self.log("pretrain/val_loss", F.cross_entropy(logits, labels), batch_size=n, sync_dist=True)
        self.log("pretrain/val_top1", (logits.argmax(1) == labels).float().mean() * 100,
                 batch_size=n, sync_dist=True)

    def final_samples(self, images: Tensor) -> Path | None:
        return None  # nothing to picture: the val top-1 says it all

    def configure_optimizers(self) -> Any:
        return common.configure_optimizers(self.parameters(), self.optimizer_factory, self.scheduler_factory)

    @property
    def checkpoint_meta(self) -> dict[str, Any]:
        return common.trunk_meta(self.trunk, "supervised", None, num_classes=self.num_classes)
