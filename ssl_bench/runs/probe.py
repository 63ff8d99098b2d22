"""The probe run: load a frozen trunk, fit per-layer probes, write results.json.

``ssl-bench probe checkpoint=PATH probe=linear|knn|svm_voc07`` or ``init=gaussian``.
Hyper-parameters (the linear heads' learning rate, per layer) are chosen on a split held out from
train; the reported numbers are on the val/test split, which is never used for any choice.
"""

from __future__ import annotations

import random
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from lightning_fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
from torchvision.transforms import v2 as T

from ssl_bench.data.images import SkipCounter, fingerprint
from ssl_bench.data.sharding import ShardedBatchSampler
from ssl_bench.data.voc import VOCClassification, collate_voc
from ssl_bench.data.voc_synthetic import resolve_voc
from ssl_bench.models.alexnet import LAYERS, AlexNet
from ssl_bench.models.checkpoint import load_suite_trunk
from ssl_bench.models.init import apply_init
from ssl_bench.models.optim import piecewise_constant
from ssl_bench.probe.feature_cache import CachedFeatures, trunk_fingerprint
from ssl_bench.probe.features import Features
from ssl_bench.probe.heads import RESIZE_MODES, FeatureExtractor, LinearProbe, ProbeHeads
from ssl_bench.probe.knn import knn_predict, topk_accuracy
from ssl_bench.probe.svm_voc07 import DEFAULT_COSTS, DEFAULT_MAX_ITER, svm_voc07
from ssl_bench.report.tracking import finish_run, wandb_run_kwargs
from ssl_bench.runs.common import RunClock, device_for, finish_record

# the paper's probe schedule: lr x0.1 at 40k, 80k, 120k of 140k iterations, scaled to the run
PAPER_STEPS = ([40_000, 80_000, 120_000], [1.0, 0.1, 0.01, 0.001], 140_000)


def load_trunk(checkpoint: str | None, init: DictConfig | None, backbone: DictConfig | None,
               seed: int, init_data: DictConfig | None = None) -> tuple[AlexNet, dict[str, Any]]:
    """The trunk to probe and a description of it: from a suite checkpoint, or an untrained init.

    init: an ``init`` group config: gaussian (the backbone's random init) or kraehenbuehl
    (data-dependent, measured on the first train images of ``init_data``, a ``data`` group config).
    """
    if checkpoint:
        trunk, meta = load_suite_trunk(checkpoint)
        return trunk, {k: meta[k] for k in ("method", "input_space", "source", "trunk")}
    if init:
        if backbone is None:
            raise ValueError("init=... needs a backbone config")
        torch.manual_seed(seed)
        trunk = instantiate(backbone)
        initialiser = instantiate(init)

        def first_images(n: int) -> torch.Tensor:  # data-dependent (Krähenbühl): no labels used
            dm = instantiate(init_data)
            dm.prepare_data()
            dm.setup("fit")
            return dm.first_train_images(n)
        name = apply_init(trunk, initialiser, first_images)["name"]
        return trunk, {"method": f"{name}/{trunk.input_space}", "input_space": trunk.input_space,
                       "source": f"init={name}", "trunk": trunk.config}
    raise ValueError("probe: give checkpoint=PATH (a suite checkpoint) or init=gaussian|kraehenbuehl")


def split_holdout(samples: list, fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic (fit, holdout) split of the train samples for hyper-parameter choice."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n = max(1, int(round(fraction * len(samples))))
    hold = sorted(order[:n])
    fit = sorted(order[n:])
    return [samples[i] for i in fit], [samples[i] for i in hold]


def check_request(cfg: DictConfig, dm: Any, trunk: AlexNet) -> None:
    """Refuse impossible requests before any work starts."""
    bad = [l for l in cfg.probe.layers if l not in LAYERS]
    if bad:
        raise ValueError(f"probe.layers: the trunk has no layer(s) {bad}; it has {list(LAYERS)}")
    if cfg.probe.resize not in RESIZE_MODES:
        raise ValueError(f"probe.resize: expected one of {RESIZE_MODES}, got {cfg.probe.resize!r}")
    if cfg.probe.kind in ("linear", "knn"):
        if dm.num_classes < 2:
            raise ValueError(f"data.root={dm.root}: the probe needs labelled data (class folders); "
                             f"found {dm.num_classes} class(es)")
        if cfg.probe.get("num_classes") and cfg.probe.num_classes != dm.num_classes:
            raise ValueError(f"probe.num_classes={cfg.probe.num_classes} but data.root={dm.root} has "
                             f"{dm.num_classes} classes")
        if not dm.val_samples:
            raise ValueError(f"data.root={dm.root}: the val split is empty")


def _batches(ds: Any, batch_size: int, shuffle: bool, seed: int, drop_last: bool = False) -> ShardedBatchSampler:
    """Seeded global batches, each split across DDP ranks (one process: the batches themselves)."""
    base = RandomSampler(ds, generator=torch.Generator().manual_seed(seed)) if shuffle else SequentialSampler(ds)
    return ShardedBatchSampler(BatchSampler(base, batch_size, drop_last=drop_last))


def feature_loader(feats: dict[str, np.ndarray], labels: np.ndarray, batch_size: int, shuffle: bool,
                   indices: np.ndarray | None = None, seed: int = 0) -> DataLoader:
    ds = CachedFeatures(feats, labels, indices)
    return DataLoader(ds, sampler=_batches(ds, batch_size, shuffle, seed), batch_size=None)


def image_loader(loader: DataLoader, shuffle: bool, seed: int) -> DataLoader:
    """The datamodule's image loader with seeded, DDP-sharded batches (same dataset, workers, collate)."""
    inner = loader.batch_sampler if loader.batch_size is not None else loader.sampler
    ds = loader.dataset
    return DataLoader(ds, batch_sampler=_batches(ds, inner.batch_size, shuffle, seed, inner.drop_last),
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      persistent_workers=loader.persistent_workers)


def fit_heads(cfg: DictConfig, dims: dict[str, int], num_classes: int, train: DataLoader,
              vals: dict[str, DataLoader], extractor: FeatureExtractor | None, out_dir: Path,
              loggers: list) -> dict[str, float]:
    """Train one head per (layer, lr in the grid) together, in one pass over ``train``; evaluate every
    head on each loader of ``vals``. Returns {"probe/<val>/<layer>@<lr>/top1": ...}."""
    steps = cfg.probe.epochs * len(train)
    bounds, values, total = PAPER_STEPS
    scheduler = partial(piecewise_constant, boundaries=bounds, values=values, scale=steps / total)
    pl.seed_everything(cfg.seed, workers=True)  # head init must not depend on a feature-cache hit or miss
    module = LinearProbe(ProbeHeads(dims, num_classes, list(cfg.probe.lr_grid)), instantiate(cfg.optimizer),
                         num_classes, scheduler=scheduler, extractor=extractor, val_names=tuple(vals))
    trainer = instantiate(cfg.trainer, max_epochs=cfg.probe.epochs, default_root_dir=str(out_dir),
                          logger=loggers or False, enable_checkpointing=False, num_sanity_val_steps=0,
                          precision=cfg.precision, check_val_every_n_epoch=cfg.probe.epochs,
                          use_distributed_sampler=False)  # the loaders shard themselves, without padding
    trainer.fit(module, train_dataloaders=train, val_dataloaders=list(vals.values()))
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("probe/") and "loss" not in k}


def select_on_holdout(raw: dict[str, float], layers: list[str],
                      grid: list[float]) -> tuple[dict[str, float], dict[str, float]]:
    """Per layer, the learning rate whose head scores best on the held-out part of train; report that
    head's test numbers (the test split never influences the choice)."""
    chosen = {l: max(grid, key=lambda lr: raw[f"probe/holdout/{l}@{lr:g}/top1"]) for l in layers}
    metrics = {}
    for l, lr in chosen.items():
        for m in ("top1", "top5"):
            metrics[f"probe/{l}/{m}"] = raw[f"probe/test/{l}@{lr:g}/{m}"]
        metrics[f"probe/{l}/holdout_top1"] = raw[f"probe/holdout/{l}@{lr:g}/top1"]
    return metrics, chosen


def run_probe(cfg: DictConfig) -> dict[str, Any]:
    """One probe job; returns the results.json record."""
    clock = RunClock()
    out_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    trunk, desc = load_trunk(cfg.get("checkpoint"), cfg.get("init"), cfg.get("backbone"), cfg.seed, cfg.data)
    if cfg.probe.kind == "svm_voc07":
        return run_svm_probe(cfg, trunk, desc, clock)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    check_request(cfg, dm, trunk)
    extractor = FeatureExtractor(trunk, cfg.probe.layers, cfg.probe.resize, desc["input_space"],
                                 pooling=cfg.probe.pooling)
    extractor = extractor.to(device_for(cfg.trainer.accelerator))
    skips = SkipCounter()
    transform = f"{extractor.resize_key}|crop{dm.crop_size}|load{dm.load_size}|{desc['input_space']}"
    cache = Path(cfg.paths.cache_dir) / "features" if cfg.probe.cache else None
    features = Features(extractor, trunk_fingerprint(trunk), transform, cache, dm.fingerprint, skips)
    extra: dict[str, Any] = {"feature_dims": extractor.dims(dm.crop_size)}
    loggers = [instantiate(c, **wandb_run_kwargs(c, out_dir)) for c in (cfg.get("logger") or {}).values()
               if c is not None]
    stored = None
    if cfg.probe.cache or cfg.probe.kind == "knn":  # streaming linear probes never need stored features
        # through the datamodule's data path: the benchmark's shared decoded cache when it has one
        bs = cfg.probe.batch_size
        stored = (features.get("train", dm.split_loader("train", bs), len(dm.train_samples)),
                  features.get("val", dm.split_loader("val", bs), len(dm.val_samples)))
    if cfg.probe.kind == "knn":
        metrics = knn_metrics(cfg, *stored, dm.num_classes)
    else:
        metrics, chosen, raw = linear_metrics(cfg, dm, extra["feature_dims"], extractor, stored, out_dir, loggers)
        extra.update(chosen_lr=chosen, all_heads=raw)
    record = probe_record(cfg, desc, dm, metrics, skips) | extra
    record["feature_cache"] = {"enabled": bool(cfg.probe.cache), "hits": features.hits, "misses": features.misses}
    # DDP: every rank holds the same synced metrics; one writes them
    record = finish_record(record, clock, cfg, out_dir, write=rank_zero_only.rank == 0)
    if rank_zero_only.rank == 0:
        finish_run(loggers, record, out_dir / "results.json")
    return record


Stored = tuple[tuple[dict[str, np.ndarray], np.ndarray], tuple[dict[str, np.ndarray], np.ndarray]]


def knn_metrics(cfg: DictConfig, train: tuple[dict[str, np.ndarray], np.ndarray],
                test: tuple[dict[str, np.ndarray], np.ndarray], num_classes: int) -> dict[str, float]:
    """Weighted kNN top-1/top-5 per layer on stored features."""
    (train_x, train_y), (test_x, test_y) = train, test
    metrics = {}
    for layer in cfg.probe.layers:
        scores = knn_predict(torch.from_numpy(np.asarray(train_x[layer], np.float32)), torch.from_numpy(train_y),
                             torch.from_numpy(np.asarray(test_x[layer], np.float32)), num_classes, cfg.probe.k,
                             cfg.probe.temperature)
        for k in (1, 5):
            metrics[f"probe/{layer}/top{k}"] = topk_accuracy(scores, torch.from_numpy(test_y), k)
    return metrics


def linear_metrics(cfg: DictConfig, dm: Any, dims: dict[str, int], extractor: FeatureExtractor,
                   stored: Stored | None, out_dir: Path, loggers: list[Any]
                   ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Linear heads for every (layer, lr) at once; the lr per layer is chosen on the holdout.
    Returns (final metrics, chosen lr per layer, every head's raw metrics)."""
    bs, C = cfg.probe.batch_size, dm.num_classes
    if stored is not None:
        (train_x, train_y), (test_x, test_y) = stored
        fit_idx, hold_idx = (np.asarray(ix) for ix in split_holdout(list(range(len(train_y))),
                                                                    cfg.probe.holdout_fraction, cfg.seed))
        train = feature_loader(train_x, train_y, bs, True, fit_idx, cfg.seed)
        vals = {"test": feature_loader(test_x, test_y, bs, False),
                "holdout": feature_loader(train_x, train_y, bs, False, hold_idx)}
        raw = fit_heads(cfg, dims, C, train, vals, None, out_dir, loggers)
    else:  # streaming: random crops and flips through the frozen trunk every step
        fit_s, hold_s = split_holdout(dm.train_samples, cfg.probe.holdout_fraction, cfg.seed)
        vals = {"test": image_loader(dm.loader(dm.val_samples, False, bs), False, cfg.seed),
                "holdout": image_loader(dm.loader(hold_s, False, bs), False, cfg.seed)}
        train = image_loader(dm.loader(fit_s, True, bs), True, cfg.seed)
        raw = fit_heads(cfg, dims, C, train, vals, extractor, out_dir, loggers)
    final, chosen = select_on_holdout(raw, list(cfg.probe.layers), list(cfg.probe.lr_grid))
    for logger in loggers:
        logger.log_metrics(final)
    return final, chosen, raw


def probe_record(cfg: DictConfig, desc: dict[str, Any], dm: Any, metrics: dict[str, float],
                 skips: SkipCounter) -> dict[str, Any]:
    """The probe's own results.json fields (the envelope is added by finish_record)."""
    top1 = {l: metrics[f"probe/{l}/top1"] for l in cfg.probe.layers}
    best_layer = max(top1, key=top1.get)
    metrics = {**metrics, "probe/best/top1": top1[best_layer]}
    return {
        "kind": "probe", "probe": cfg.probe.kind, "method": desc["method"], "status": "completed",
        "protocol": f"{cfg.probe.kind}, {cfg.probe.resize} resize, frozen trunk, "
                    f"{'cached centre-crop features' if cfg.probe.cache else 'random crops'}",
        "best_layer": best_layer, "metrics": metrics, "trunk": desc,
        "dataset": {"name": Path(str(dm.root)).name, "root": str(dm.root), "fingerprint": dm.fingerprint,
                    "num_train": len(dm.train_samples), "num_val": len(dm.val_samples),
                    "num_classes": dm.num_classes, "skipped_images": skips.count},
    }


def run_svm_probe(cfg: DictConfig, trunk: torch.nn.Module, desc: dict[str, Any], clock: RunClock) -> dict[str, Any]:
    """``probe=svm_voc07``: per-layer VOC2007 linear SVMs (Goyal et al. 2019) on a frozen trunk."""
    out_dir = Path(cfg.paths.output_dir)
    root = resolve_voc(cfg.probe.voc_root, cfg.probe.year, cfg.paths.data_dir, cfg.probe.synthetic,
                       "probe.voc_root")
    crop = cfg.probe.crop_size
    transform = T.Compose([T.Resize(crop, antialias=True), T.CenterCrop(crop)])
    sets = {split: VOCClassification(root, cfg.probe.year, split, transform) for split in ("trainval", "test")}
    device = device_for(cfg.trainer.accelerator)
    extractor = FeatureExtractor(trunk, cfg.probe.layers, cfg.probe.resize, desc["input_space"],
                                 pooling=cfg.probe.pooling).to(device)
    skips = SkipCounter()
    fp = fingerprint(sets["trainval"].paths + sets["test"].paths, root)
    cache = Path(cfg.paths.cache_dir) / "features" if cfg.probe.cache else None
    features = Features(extractor, trunk_fingerprint(trunk), f"voc|{extractor.resize_key}|{crop}|{desc['input_space']}",
                        cache, fp, skips)
    loaded = {}
    for split, ds in sets.items():
        loader = DataLoader(ds, batch_size=cfg.probe.batch_size, num_workers=cfg.probe.num_workers,
                            collate_fn=collate_voc)
        loaded[split] = features.get(f"voc{cfg.probe.year}-{split}", loader, len(ds))
    (trx, tr_y), (tex, te_y) = loaded["trainval"], loaded["test"]
    costs = list(cfg.probe.costs) if cfg.probe.get("costs") else DEFAULT_COSTS
    max_iter = int(cfg.probe.get("max_iter") or DEFAULT_MAX_ITER)
    metrics: dict[str, float] = {}
    per_class: dict[str, Any] = {}
    for layer in cfg.probe.layers:
        r = svm_voc07(trx[layer].astype("float32"), tr_y, tex[layer].astype("float32"), te_y, costs=costs,
                      n_jobs=cfg.probe.n_jobs, seed=cfg.seed, max_iter=max_iter,
                      shared_dir=cfg.probe.get("shared_dir"))
        metrics[f"voc07/svm/{layer}/mAP"] = 100 * r["mAP"]
        metrics[f"voc07/svm/{layer}/mAP_11pt"] = 100 * r["mAP_voc07"]
        metrics[f"voc07/svm/{layer}/not_converged"] = r["not_converged"]
        per_class[layer] = {"ap": r["ap"], "costs": r["costs"], "class_names": list(r["class_names"]),
                            "not_converged": r["not_converged_per_class"]}
        if r["not_converged"]:  # an SVM cut short may score below its protocol value
            hit = ", ".join(f"{n} {k}" for n, k in zip(r["class_names"], r["not_converged_per_class"]) if k)
            warnings.warn(f"VOC07 SVM, layer {layer}: {r['not_converged']} of {r['fits']} fits stopped at "
                          f"probe.max_iter={max_iter} (per class: {hit})", stacklevel=2)
    best = max(cfg.probe.layers, key=lambda l: metrics[f"voc07/svm/{l}/mAP"])
    record = {
        "kind": "probe", "probe": "svm_voc07", "method": desc["method"], "status": "completed",
        "protocol": f"VOC07 linear SVM (Goyal et al.), {cfg.probe.resize} resize, crop {crop}",
        "best_layer": best, "metrics": metrics, "per_class": per_class, "trunk": desc,
        "dataset": {"name": f"VOC{cfg.probe.year}" + ("-synthetic" if cfg.probe.voc_root == "synthetic" else ""),
                    "root": str(root), "fingerprint": fp, "num_train": len(tr_y), "num_val": len(te_y),
                    "skipped_images": skips.count},
        "feature_cache": {"enabled": bool(cfg.probe.cache), "hits": features.hits, "misses": features.misses},
    }
    return finish_record(record, clock, cfg, out_dir)
