"""Live probes while pretraining: a kNN probe of the trunk (and optionally a t-SNE picture) every N
epochs, for any pretext module that holds its trunk as ``trunk`` (every pretext of ssl_bench.pretext).

The probe is an observer: it reads a deep copy of the trunk under ``torch.no_grad``, leaves every
module's train/eval mode as it found it, and runs inside a guard that restores the torch (CPU and
CUDA), numpy and Python random states, drawing its subsets from its own seeded generator and reading
images through its own loader; training with and without it gives the same weights, bit for bit.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from ssl_bench.errors import ConfigError
from ssl_bench.pretext.common import log_image
from ssl_bench.probe.heads import FeatureExtractor
from ssl_bench.probe.knn import knn_predict, topk_accuracy

# conf/probe/pooling/alexnet.yaml's bilinear sides, for calls from Python without a config
DEFAULT_POOLING = {"bilinear": {"conv1": 10, "conv2": 6, "conv3": 5, "conv4": 5, "conv5": 6}}


@contextmanager
def rng_guard() -> Iterator[None]:
    """Restore the torch (CPU and every CUDA device), numpy and Python random states on exit."""
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


@contextmanager
def modes_kept(module: nn.Module) -> Iterator[None]:
    """Put back every submodule's train/eval mode as found (a probe may switch some to eval)."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield
    finally:
        for m, was in modes:
            m.training = was


def trunk_features(trunk: nn.Module, images: Tensor, layers: Sequence[str], *, input_space: str | None = None,
                   resize: str = "bilinear", pooling: Mapping[str, Mapping[str, Any]] | None = None,
                   batch_size: int = 256, channels_last: bool = False) -> dict[str, Tensor]:
    """Frozen features of a copy of ``trunk`` (the trunk itself is not touched).

    images: uint8 N x 3 x H x W (any device) -> {layer: float32 N x d_layer on the CPU}, the probe
    harness's features (`FeatureExtractor`: ReLU map resized per ``pooling[resize][layer]``)."""
    space = input_space or getattr(trunk, "input_space", "rgb")
    twin = copy.deepcopy(trunk)
    # compile=true binds a compiled forward_features of the original trunk to the instance: the copy
    # must run its own (else the original's batch-norm statistics would move)
    twin.__dict__.pop("forward_features", None)
    frozen = FeatureExtractor(twin, layers, resize, space, channels_last, pooling=pooling or DEFAULT_POOLING)
    device = next(trunk.parameters()).device
    parts: dict[str, list[Tensor]] = {k: [] for k in layers}
    with torch.no_grad():
        for i in range(0, images.shape[0], batch_size):
            for k, v in frozen(images[i:i + batch_size].to(device)).items():
                parts[k].append(v.cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def fixed_subset(datamodule: Any, split: str, n: int, seed: int, batch_size: int) -> tuple[Tensor, Tensor]:
    """``n`` images of a split drawn once with a seeded generator, centre-cropped as for evaluation:
    (uint8 n' x 3 x crop x crop, int64 n'), n' <= n (undecodable files are left out)."""
    whole = datamodule.split_loader(split)  # built, never iterated: its workers are not started
    dataset, collate = whole.dataset, whole.collate_fn
    g = torch.Generator().manual_seed(seed)
    picked = torch.randperm(len(dataset), generator=g)[:n].sort().values.tolist()
    loader = DataLoader(Subset(dataset, picked), batch_size=batch_size, num_workers=0, collate_fn=collate,
                        generator=torch.Generator().manual_seed(seed))
    images, labels = [], []
    for batch in loader:
        if batch["image"].shape[0]:
            images.append(batch["image"])
            labels.append(batch["label"])
    if not images:
        raise ConfigError(f"callbacks.monitor: no decodable {split} image in data.root={datamodule.root}")
    return torch.cat(images), torch.cat(labels)


class LiveProbe(pl.Callback):
    """Every ``every_n_epochs`` training epochs (0 = never): a weighted kNN probe (ssl_bench.probe.knn)
    of each layer's frozen features, a fixed seeded subset of the train split as the bank and of
    the val split as the queries, logged as ``monitor/knn/<layer>/top1`` to every logger, with the
    probe's own cost as ``monitor/seconds``. Every ``tsne_every_n_epochs`` (0 = never): a t-SNE
    picture of ``tsne_layer`` on the queries, <run dir>/monitor/tsne_<layer>_epoch_<epoch>.png,
    also sent to loggers that take images (W&B).

    Args:
        pooling: per resize mode, per layer, the resized map (conf/probe/pooling/alexnet.yaml).
    """

    def __init__(self, every_n_epochs: int = 0, layers: Sequence[str] = ("conv5",), bank_size: int = 1024,
                 query_size: int = 512, k: int = 20, temperature: float = 0.07, resize: str = "bilinear",
                 pooling: Mapping[str, Mapping[str, Any]] | None = None, batch_size: int = 256, seed: int = 0,
                 tsne_every_n_epochs: int = 0, tsne_layer: str = "conv5") -> None:
        for key, value in (("every_n_epochs", every_n_epochs), ("tsne_every_n_epochs", tsne_every_n_epochs)):
            if int(value) < 0:
                raise ConfigError(f"callbacks.monitor.{key}: expected >= 0 (0 = never), got {value}")
        for key, value in (("bank_size", bank_size), ("query_size", query_size), ("k", k)):
            if int(value) < 1:
                raise ConfigError(f"callbacks.monitor.{key}: expected >= 1, got {value}")
        self.every, self.tsne_every = int(every_n_epochs), int(tsne_every_n_epochs)
        self.layers, self.tsne_layer = tuple(layers), str(tsne_layer)
        self.sizes, self.k, self.temperature = (int(bank_size), int(query_size)), int(k), float(temperature)
        self.resize, self.batch_size, self.seed = resize, int(batch_size), int(seed)
        self.pooling = {m: dict(t) for m, t in (pooling or DEFAULT_POOLING).items()}
        self.data: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
        self.seconds = 0.0  # all probes of this process together

    @staticmethod
    def _due(every: int, epoch: int) -> bool:
        return every > 0 and (epoch + 1) % every == 0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        knn, tsne = self._due(self.every, epoch), self._due(self.tsne_every, epoch)
        if not (knn or tsne) or not trainer.is_global_zero:
            return
        start = time.perf_counter()
        with rng_guard(), modes_kept(pl_module), torch.no_grad():
            metrics, picture = self.probe(trainer, pl_module, knn, tsne)
        spent = time.perf_counter() - start
        self.seconds += spent
        for key, value in {**metrics, "monitor/seconds": spent}.items():
            pl_module.log(key, value, on_step=False, on_epoch=True, rank_zero_only=True)
        if picture is not None:
            log_image(pl_module, f"monitor/tsne/{self.tsne_layer}", picture)

    def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, knn: bool = True,
              tsne: bool = False) -> tuple[dict[str, float], Path | None]:
        """({"monitor/knn/<layer>/top1": percent}, the t-SNE PNG or None) of the module's trunk now."""
        trunk = getattr(pl_module, "trunk", None)
        if not isinstance(trunk, nn.Module) or not hasattr(trunk, "forward_features"):
            raise ConfigError(f"callbacks.monitor: {type(pl_module).__name__} has no trunk with forward_features "
                              f"to probe; set callbacks.monitor.every_n_epochs=0")
        bank_x, bank_y, query_x, query_y = self._subsets(trainer)
        layers = tuple(dict.fromkeys((*self.layers,) * knn + (self.tsne_layer,) * tsne))
        feats = trunk_features(trunk, torch.cat([bank_x, query_x]), layers, resize=self.resize,
                               pooling=self.pooling, batch_size=self.batch_size)
        n, classes = bank_x.shape[0], int(max(bank_y.max(), query_y.max())) + 1
        metrics = {}
        for layer in self.layers if knn else ():
            scores = knn_predict(feats[layer][:n], bank_y, feats[layer][n:], classes, self.k, self.temperature)
            metrics[f"monitor/knn/{layer}/top1"] = topk_accuracy(scores, query_y, 1)
        picture = self._tsne(trainer, feats[self.tsne_layer][n:], query_y) if tsne else None
        return metrics, picture

    def _subsets(self, trainer: pl.Trainer) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The bank and query images and labels, read once."""
        if self.data is None:
            dm = getattr(trainer, "datamodule", None)
            if dm is None or not hasattr(dm, "split_loader"):
                raise ConfigError("callbacks.monitor: the kNN probe reads the run's data module (train and val "
                                  "splits); this run has none: set callbacks.monitor.every_n_epochs=0")
            bank = fixed_subset(dm, "train", self.sizes[0], self.seed, self.batch_size)
            query = fixed_subset(dm, "val", self.sizes[1], self.seed + 1, self.batch_size)
            if min(bank[1].min(), query[1].min()) < 0:
                raise ConfigError("callbacks.monitor: the kNN probe needs class labels (data.layout=imagefolder); "
                                  "set callbacks.monitor.every_n_epochs=0 for unlabelled data")
            self.data = (*bank, *query)
        return self.data

    def _tsne(self, trainer: pl.Trainer, feats: Tensor, labels: Tensor) -> Path:
        from ssl_bench.report.tsne import write_tsne_png
        epoch = trainer.current_epoch
        path = Path(trainer.default_root_dir) / "monitor" / f"tsne_{self.tsne_layer}_epoch_{epoch:03d}.png"
        names = getattr(getattr(trainer, "datamodule", None), "classes", None) or None
        return write_tsne_png(feats.numpy(), labels.numpy(), path, title=f"{self.tsne_layer}, epoch {epoch}",
                              class_names=names, seed=self.seed)


__all__ = ["DEFAULT_POOLING", "LiveProbe", "fixed_subset", "modes_kept", "rng_guard", "trunk_features"]
