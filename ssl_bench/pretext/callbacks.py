"""Lightning callbacks and plugins for what every pretext run does besides learning: the checkpoint's
metadata, checkpoint files that are never half-written, and pictures of what the network sees and
predicts.

Protocol with the pretext modules (``ssl_bench.pretext.common``):
- ``checkpoint_meta`` (a dict) and ``skips`` (a `SkipCounter`);
- ``training_step`` and ``validation_step`` return a dict whose optional ``"samples"`` entry is the
  material of a picture (tensors of the step), and ``save_samples(*samples, tag=...)`` draws it.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from ssl_bench.errors import ConfigError, StorageError
from ssl_bench.io import atomic_writer

# Top-level checkpoint key; the trunk loaders (ssl_bench.models, ssl_bench.colorization) read it.
META_KEY = "ssl_bench"


class CheckpointMetadata(pl.Callback):
    """Stores the module's ``checkpoint_meta`` (pretext, variant, input space, trunk config: what any
    tool needs to rebuild and feed the trunk) and the count of unreadable images under
    ``checkpoint["ssl_bench"]``; a resumed run takes the count back, so results.json counts the whole run."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = {**pl_module.checkpoint_meta, "skipped_images": pl_module.skips.count}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        pl_module.skips.count = checkpoint.get(META_KEY, {}).get("skipped_images", 0)


class CheckpointWriteError(StorageError):
    """A checkpoint could not be written for lack of disk space; the message names the file."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes every checkpoint (step, last, any ``trainer.save_checkpoint``) to a temporary file
    beside it and renames it into place: a full disk or a kill mid-write leaves the previous file
    loadable and no truncated one, so ``ckpt_path=auto`` can always resume."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint: storage_options are not supported")
        try:
            with atomic_writer(path) as f:
                torch.save(checkpoint, f)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise CheckpointWriteError(e.errno, f"not enough disk space to write the checkpoint {Path(path)} "
                                                f"({e.strerror or e}); the earlier checkpoints are kept") from e


def _samples(outputs: Any) -> tuple[Any, ...] | None:
    return outputs.get("samples") if isinstance(outputs, Mapping) else None


class SampleGrids(pl.Callback):
    """Writes <run dir>/samples/step_<step>.png from a training batch every ``every_n_steps``
    training batches (0 = never) and val_epoch_<epoch>.png from the first validation batch of each
    validation run, on global rank 0 only.

    The step counts training batches: Lightning's ``global_step`` counts optimiser steps, which
    under manual optimisation are one per optimiser and batch."""

    def __init__(self, every_n_steps: int = 500) -> None:
        if every_n_steps < 0:
            raise ConfigError(f"callbacks.samples.every_n_steps: expected >= 0, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.step = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        per_batch = 1 if pl_module.automatic_optimization else max(1, len(trainer.optimizers))
        self.step = trainer.global_step // per_batch

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        samples = _samples(outputs)
        every = self.every_n_steps
        if samples is not None and every and self.step % every == 0 and trainer.is_global_zero:
            pl_module.save_samples(*samples, tag=f"step_{self.step:07d}")

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        samples = _samples(outputs)
        if samples is not None and batch_idx == 0 and trainer.is_global_zero and not trainer.sanity_checking:
            pl_module.save_samples(*samples, tag=f"val_epoch_{pl_module.current_epoch:03d}")


__all__ = ["AtomicCheckpointIO", "CheckpointMetadata", "CheckpointWriteError", "META_KEY", "SampleGrids"]
