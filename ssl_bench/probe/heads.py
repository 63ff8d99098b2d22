"""Frozen-trunk probes: per-layer feature extraction and linear heads trained together.

Protocol (docs/protocols.md §3.1): ReLU outputs of conv1..conv5, resized to about 9,000 dimensions
(bilinear: the authors' updated protocol; avgpool: Goyal et al.), batch norm without affine
parameters, one linear classifier per layer; all heads train on one trunk pass per batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from ssl_bench.data.sharding import rank_and_world
from ssl_bench.errors import ConfigError
from ssl_bench.models.inputs import trunk_input

RESIZE_MODES = ("bilinear", "avgpool")


def resize_layer(x: Tensor, layer: str, mode: str, spec: int | Sequence[int]) -> Tensor:
    """N x C x H x W activation -> N x (C*s*s) features (about 9k dims with the protocol's tables).

    spec: bilinear: the output side s; avgpool: the (kernel, stride) of the average pooling.
    Goyal et al.'s avgpool kernels assume the full 227-pixel AlexNet geometry; a map smaller than
    the kernel is an error rather than a silent change of protocol.
    """
    if mode == "bilinear":
        x = F.interpolate(x, size=(int(spec), int(spec)), mode="bilinear", align_corners=False)
    elif mode == "avgpool":
        k, stride = spec
        if min(x.shape[-2:]) < k:
            raise ConfigError(f"probe.resize=avgpool: {layer} map is {tuple(x.shape[-2:])}, smaller than "
                              f"the kernel {k} of probe.pooling.avgpool.{layer}; use probe.resize=bilinear "
                              f"for small inputs")
        x = F.avg_pool2d(x, k, stride)
    else:
        raise ConfigError(f"probe.resize: expected one of {RESIZE_MODES}, got {mode!r}")
    return x.flatten(1)


def _spec(value: Any) -> int | tuple[int, ...]:
    """A config's side or [kernel, stride] as plain ints."""
    return int(value) if isinstance(value, int) else tuple(int(v) for v in value)


class FeatureExtractor(nn.Module):
    """A frozen trunk that maps uint8 images to resized, flattened per-layer features.

    Frozen means frozen: parameters never require grad and the trunk stays in eval mode (batch-norm
    running statistics never move), whatever mode the parent module is put in.

    Args:
        pooling: per resize mode, per layer, the ``spec`` of `resize_layer` (``probe.pooling``,
            conf/probe/pooling/alexnet.yaml); the chosen mode must cover every layer.
    """

    def __init__(self, trunk: nn.Module, layers: Sequence[str], resize: str = "bilinear",
                 input_space: str = "L", channels_last: bool = True, *,
                 pooling: Mapping[str, Mapping[str, Any]]) -> None:
        super().__init__()
        known = getattr(trunk, "forward_features", None)
        if known is None:
            raise TypeError("probe: the trunk has no forward_features(x, layers)")
        if resize not in RESIZE_MODES:
            raise ConfigError(f"probe.resize: expected one of {RESIZE_MODES}, got {resize!r}")
        missing = [k for k in layers if k not in pooling.get(resize, {})]
        if missing:
            raise ConfigError(f"probe.pooling.{resize} has no entry for layer(s) {missing}")
        self.trunk, self.layers = trunk.requires_grad_(False).eval(), tuple(layers)
        self.resize, self.input_space, self.channels_last = resize, input_space, channels_last
        self.pooling = {mode: {k: _spec(v) for k, v in table.items()} for mode, table in pooling.items()}
        self.specs = {k: self.pooling[resize][k] for k in self.layers}
        if channels_last:
            self.trunk.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> "FeatureExtractor":
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """uint8 N x 3 x H x W -> {layer: float N x d_layer}."""
        x = trunk_input(images, self.input_space)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        maps = self.trunk.forward_features(x, self.layers)
        return {k: resize_layer(v, k, self.resize, self.specs[k]).float() for k, v in maps.items()}

    @property
    def resize_key(self) -> str:
        """The resize mode and its per-layer specs, for feature cache keys."""
        return self.resize + "".join(f"|{k}={self.specs[k]}" for k in self.layers)

    def dims(self, crop_size: int) -> dict[str, int]:
        probe = torch.zeros(1, 3, crop_size, crop_size, dtype=torch.uint8,
                            device=next(self.trunk.parameters()).device)
        return {k: v.shape[1] for k, v in self(probe).items()}


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch under DDP.

    Each rank holds a strided part of the one-process batch (ShardedBatchSampler); summing counts,
    sums and squared deviations over ranks gives the statistics one process would compute, so a DDP
    probe trains the same heads. The probe's inputs are frozen features (no gradient), so the
    statistics need no backward pass. Eval mode: plain BatchNorm1d.
    """

    def forward(self, x: Tensor) -> Tensor:
        """x: float N x d (N may be 0 on a rank that got an empty part of the last batch).

        One process uses torch's kernel. Under DDP the sums are accumulated in float64, so that the
        ranks' statistics are those of the global batch to well below float32 rounding (the heads of a
        two-process run and of one process differ by ~1e-7, tests/runs/test_ddp.py)."""
        if not self.training or rank_and_world()[1] == 1:
            return super().forward(x)  # about 10x faster than the float64 path below (bench/probe.py)
        if x.requires_grad:
            raise NotImplementedError("GlobalBatchNorm1d: statistics are computed without gradient")
        n, mean, var = self._batch_stats(x)
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
            self.running_var.mul_(1 - m).add_(m * (var * n / (n - 1)).to(self.running_var.dtype))
            self.num_batches_tracked += 1
        return (x - mean.to(x.dtype)) * torch.rsqrt(var + self.eps).to(x.dtype)

    @staticmethod
    def _batch_stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: float N x d -> (count, mean d, biased variance d) of the global batch, in float64.

        Two passes (mean, then squared deviations from it) rather than E[x^2] - E[x]^2, whose
        cancellation loses the variance of features with a large mean."""
        _, world = rank_and_world()
        stats = torch.cat([x.new_tensor([x.shape[0]], dtype=torch.float64), x.sum(0, dtype=torch.float64)])
        if world > 1:
            dist.all_reduce(stats)
        n, mean = stats[0], stats[1:] / stats[0]
        centred = x - mean.to(x.dtype)
        sq = (centred * centred).sum(0, dtype=torch.float64)
        if world > 1:
            dist.all_reduce(sq)
        return n, mean, sq / n

    def follow(self, other: "GlobalBatchNorm1d") -> None:
        """Take ``other``'s running statistics: heads that normalise the same features share them."""
        with torch.no_grad():
            self.running_mean.copy_(other.running_mean)
            self.running_var.copy_(other.running_var)
            self.num_batches_tracked.copy_(other.num_batches_tracked)


class ProbeHeads(nn.Module):
    """Per head: BatchNorm1d without affine, then a linear classifier.

    Args:
        dims: feature dimension per layer.
        num_classes: classifier outputs.
        lrs: one head per (layer, learning rate), named "conv3@0.01", so that a learning-rate grid
            trains in the same pass as the layers; None = one head per layer, named by the layer.
    """

    def __init__(self, dims: dict[str, int], num_classes: int, lrs: Sequence[float] | None = None) -> None:
        super().__init__()
        self.layer_of = ({f"{k}@{lr:g}": k for k in dims for lr in lrs} if lrs else {k: k for k in dims})
        self.lr_of = {f"{k}@{lr:g}": float(lr) for k in dims for lr in lrs} if lrs else {}
        self.names = tuple(self.layer_of)
        # ModuleDict keys cannot hold "." (the learning rate), hence the index keys
        self.heads = nn.ModuleList(
            nn.Sequential(GlobalBatchNorm1d(dims[k], affine=False), nn.Linear(dims[k], num_classes))
            for k in self.layer_of.values())
        self.index = {n: i for i, n in enumerate(self.names)}
        for head in self.heads:
            nn.init.normal_(head[1].weight, std=0.01)
            nn.init.zeros_(head[1].bias)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.layer_of.values()))

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """{layer: float N x d} -> {head name: logits N x num_classes}.

        In training, the heads of one layer (one per learning rate) see the same batch, so its
        statistics are computed once and the other heads' batch norms follow the first one's."""
        out, normed = {}, {}
        for n, k in self.layer_of.items():
            bn, linear = self.heads[self.index[n]]
            if not self.training:
                out[n] = linear(bn(feats[k]))
                continue
            if k in normed:
                bn.follow(normed[k][0])
            else:
                normed[k] = (bn, bn(feats[k]))
            out[n] = linear(normed[k][1])
        return out


class LinearProbe(pl.LightningModule):
    """Linear heads on a frozen trunk (or on cached features when ``extractor`` is None).

    Args:
        heads: the heads (per layer, or per layer and learning rate).
        optimizer: partial optimiser factory; receives one parameter group per head (heads only).
        num_classes: for the accuracy metrics.
        scheduler: partial LR-scheduler factory stepped per iteration, or None.
        extractor: frozen trunk; None when batches carry precomputed "features".
        val_names: names of the validation loaders, in order (e.g. ("test", "holdout")): metrics
            are logged as ``probe/<loader>/<head>/top1``; with one loader, ``probe/<head>/top1``.
        bias_lr_mult, bias_weight_decay: the classifier biases' lr multiplier and weight decay
            (the authors' prototxt: lr x2, no decay); None keeps the optimiser's weight decay.
    """

    def __init__(self, heads: ProbeHeads, optimizer: Callable[..., Any], num_classes: int,
                 scheduler: Callable[..., Any] | None = None, extractor: FeatureExtractor | None = None,
                 val_names: Sequence[str] = ("val",), bias_lr_mult: float = 1.0,
                 bias_weight_decay: float | None = None) -> None:
        super().__init__()
        self.bias_lr_mult, self.bias_weight_decay = float(bias_lr_mult), bias_weight_decay
        self.heads, self.extractor = heads, extractor
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.val_names = tuple(val_names)
        top5 = min(5, num_classes)
        self.keys = [(v, n) for v in self.val_names for n in heads.names]
        self.top1 = nn.ModuleList(MulticlassAccuracy(num_classes, top_k=1, average="micro") for _ in self.keys)
        self.top5 = nn.ModuleList(MulticlassAccuracy(num_classes, top_k=top5, average="micro") for _ in self.keys)
        self.metric_index = {k: i for i, k in enumerate(self.keys)}

    def features(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        if "features" in batch:
            return {k: v.float() for k, v in batch["features"].items()}
        assert self.extractor is not None and not self.extractor.trunk.training
        return self.extractor(batch["image"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        _, world = rank_and_world()
        n = batch["label"].new_tensor(batch["label"].shape[0], dtype=torch.float32)
        if world == 1 and n == 0:
            return None
        if world > 1:  # every rank must step (collectives); an empty part contributes zero
            dist.all_reduce(n)
        logits = self.heads(self.features(batch))
        # summed over this rank's part / the global count, times world: DDP's gradient average then
        # equals the one-process mean over the whole batch
        loss = torch.stack([F.cross_entropy(v, batch["label"], reduction="sum") for v in logits.values()]).sum()
        loss = loss / n * world
        self.log("probe/train_loss", loss, prog_bar=True, batch_size=max(1, batch["label"].shape[0]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch["label"].numel() == 0:
            return
        split = self.val_names[dataloader_idx]
        for n, v in self.heads(self.features(batch)).items():
            i = self.metric_index[(split, n)]
            self.top1[i].update(v, batch["label"])
            self.top5[i].update(v, batch["label"])

    def on_validation_epoch_end(self) -> None:
        for i, (split, n) in enumerate(self.keys):
            prefix = f"probe/{n}" if len(self.val_names) == 1 else f"probe/{split}/{n}"
            self.log(f"{prefix}/top1", 100 * self.top1[i].compute(), sync_dist=True, add_dataloader_idx=False)
            self.log(f"{prefix}/top5", 100 * self.top5[i].compute(), sync_dist=True, add_dataloader_idx=False)
            self.top1[i].reset()
            self.top5[i].reset()

    def _param_groups(self, name: str) -> list[dict[str, Any]]:
        """Head ``name``'s parameter groups: everything but the classifier bias at the head's lr, the
        bias apart when it has its own lr multiplier or weight decay."""
        head = self.heads.heads[self.heads.index[name]]
        lr = self.heads.lr_of.get(name)
        base = {"lr": lr} if lr is not None else {}
        if self.bias_lr_mult == 1.0 and self.bias_weight_decay is None:
            return [{"params": list(head.parameters()), "name": name, **base}]
        bias = head[1].bias
        rest = [p for p in head.parameters() if p is not bias]
        extra: dict[str, Any] = {} if self.bias_weight_decay is None else {
            "weight_decay": float(self.bias_weight_decay)}
        # without a per-head lr the optimiser's own lr is multiplied once it is built
        extra.update({"lr": lr * self.bias_lr_mult} if lr is not None else {"lr_mult": self.bias_lr_mult})
        return [{"params": rest, "name": name, **base}, {"params": [bias], "name": f"{name}/bias", **extra}]

    def configure_optimizers(self) -> Any:
        groups = [g for n in self.heads.names for g in self._param_groups(n)]
        opt = self.optimizer_factory(groups)
        for g in opt.param_groups:
            g["lr"] *= g.pop("lr_mult", 1.0)
        owned = {id(p) for g in opt.param_groups for p in g["params"]}
        head_params = {id(p) for p in self.heads.parameters()}
        assert owned == head_params, "probe optimiser must hold the head parameters and nothing else"
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"}}
