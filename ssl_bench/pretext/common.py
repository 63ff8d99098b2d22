"""What every pretext module shares, as functions (composition rather than a base class).

Protocol of a pretext module (what ``ssl_bench.runs.pretrain`` relies on):
- constructor takes built components: ``trunk``, partial ``optimizer`` and ``scheduler`` factories,
  ``input_space`` ("L" or "rgb": how uint8 images are fed to the trunk; must match the trunk's);
- an optional static ``data_arguments(datamodule, cache_dir, arguments) -> dict``: constructor
  arguments derived from the training data, given the configured (built) ones (colorization's ab
  prior, supervised's number of classes);
- batches are ``{"image": uint8 N x 3 x H x W, "label": int64 N, "skipped": [paths]}``;
- logs ``pretrain/loss`` (train) and ``pretrain/val_loss`` (val), raises `NonFiniteLossError`;
- ``training_step`` returns ``{"loss": ..., "samples": ...}`` ("samples" optional, also returned by
  ``validation_step``): the material ``save_samples(*samples, tag=...)`` pictures;
- ``checkpoint_meta`` (pretext, variant, input_space, trunk config) and ``skips`` (a `SkipCounter`),
  stored in every checkpoint by ``ssl_bench.pretext.callbacks.CheckpointMetadata``;
- ``final_samples(images) -> Path | None``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchvision.utils import save_image

from ssl_bench.data.images import SkipCounter
from ssl_bench.errors import ConfigError, TrainingStopped
from ssl_bench.io import atomic_writer


class NonFiniteLossError(TrainingStopped):
    """The loss became NaN/inf; the run stops and the last good checkpoint is kept."""


def check_trunk(trunk: nn.Module, input_space: str) -> None:
    """The trunk must consume the input the pretext feeds it."""
    space = getattr(trunk, "input_space", None)
    if space is not None and space != input_space:
        raise ConfigError(f"backbone.input_space={space!r} but this pretext feeds {input_space!r} "
                          f"inputs (pretext.input_space); set both to the same value")
    channels = {"L": 1, "rgb": 3}[input_space]
    if getattr(trunk, "in_channels", channels) != channels:
        raise ConfigError(f"backbone.in_channels={trunk.in_channels} but input_space={input_space!r} "
                          f"has {channels} channel(s)")


def batch_images(module: pl.LightningModule, batch: dict[str, Any]) -> Tensor | None:
    """Count the batch's unreadable files; the decodable uint8 images, or None when there are none."""
    module.skips.add(batch["skipped"])
    images = batch["image"]
    return images if images.shape[0] else None


def check_finite(loss: Tensor, step: int, name: str = "pretrain/loss") -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"{name} is {loss.item()} at step {step}")


def configure_optimizers(params: Any, optimizer: Callable[..., Any],
                         scheduler: Callable[..., Any] | None) -> Any:
    """Lightning's optimiser spec from partial factories; schedulers step per iteration."""
    opt = optimizer(params)
    if scheduler is None:
        return opt
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler(opt), "interval": "step"}}


def trunk_meta(trunk: nn.Module, pretext: str, variant: str | None, **extra: Any) -> dict[str, Any]:
    """What any tool needs to rebuild and feed the trunk (stored in every checkpoint)."""
    return {"pretext": pretext, "variant": variant, "input_space": getattr(trunk, "input_space", "rgb"),
            "trunk": getattr(trunk, "config", {}), **extra}


def samples_dir(module: pl.LightningModule) -> Path | None:
    """<run dir>/samples, or None outside a Trainer (unit tests)."""
    return Path(module.trainer.default_root_dir) / "samples" if module._trainer else None


def save_grid(rows: Tensor, path: Path, ncol: int) -> Path:
    """Write float N x 3 x H x W images in [0,1] as a PNG grid atomically; small images are enlarged."""
    rows = rows.detach().float().clamp(0, 1).cpu()
    if rows.shape[-2] < 128:  # small training crops are unreadable at 1:1
        rows = torch.nn.functional.interpolate(rows, scale_factor=-(-128 // rows.shape[-2]), mode="nearest")
    with atomic_writer(path) as f:
        save_image(rows, f, format="png", nrow=ncol, padding=2, pad_value=1.0)
    return path


def log_image(module: pl.LightningModule, key: str, path: Path) -> None:
    """Send a PNG to loggers that take images (W&B); the CSV logger keeps the file path."""
    for logger in module.loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=key, images=[str(path)], step=module.global_step)


__all__ = ["NonFiniteLossError", "SkipCounter", "batch_images", "check_finite", "check_trunk",
           "configure_optimizers", "log_image", "samples_dir", "save_grid", "trunk_meta"]


def pool5(trunk: nn.Module, x: Tensor) -> Tensor:
    """The trunk up to pool5, the encoders' code: N x C_in x S x S -> N x C5 x h x w."""
    return trunk.pool5(trunk.forward_features(x, ("conv5",))["conv5"])


def pool5_shape(trunk: nn.Module, size: int) -> tuple[int, int, int]:
    """(C5, h, w) of :func:`pool5` on a ``size`` x ``size`` input, from a dummy batch run in eval mode
    so that it does not touch the batch-norm running statistics."""
    was = trunk.training
    trunk.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(1, getattr(trunk, "in_channels", 3), size, size, device=next(trunk.parameters()).device)
            c, h, w = pool5(trunk, x).shape[1:]
    finally:
        trunk.train(was)
    return int(c), int(h), int(w)
