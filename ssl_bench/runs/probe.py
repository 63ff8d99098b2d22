"""The probe run: load a frozen trunk, fit per-layer probes, write results.json.

``ssl-bench probe checkpoint=PATH probe=linear|knn|svm_voc07 [protocol=fast|paper]`` or ``init=gaussian``.
The protocol's values (trunk geometry, crop, resize, schedule, ...) come from ``cfg.recipe``
(conf/recipe/probe/<probe>_<protocol>.yaml); results.json records them and how they deviate from the
published recipe. Hyper-parameters chosen on data (the fast linear heads' learning rate, per layer)
use a split held out from train; the reported numbers are on the val/test split, which is never used
for any choice.
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
from ssl_bench.errors import ConfigError, DataError
from ssl_bench.io import atomic_writer
from ssl_bench.models.alexnet import GEOMETRIES, LAYERS, AlexNet
from ssl_bench.models.checkpoint import read_suite_checkpoint
from ssl_bench.models.init import apply_init
from ssl_bench.models.optim import piecewise_constant
from ssl_bench.probe.feature_cache import CachedFeatures, trunk_fingerprint
from ssl_bench.probe.features import Features
from ssl_bench.probe.heads import RESIZE_MODES, FeatureExtractor, LinearProbe, ProbeHeads
from ssl_bench.probe.knn import knn_predict, topk_accuracy
from ssl_bench.probe.svm_voc07 import DEFAULT_COSTS, DEFAULT_MAX_ITER, svm_voc07
from ssl_bench.report.protocol import paper_recipe, protocol_record
from ssl_bench.report.tracking import finish_run, wandb_run_kwargs
from ssl_bench.runs.common import (
    RunClock,
    device_for,
    finish_record,
    per_device_batch,
    recipe_settings,
    run_precision,
    world_size,
)


def probe_settings(cfg: DictConfig) -> dict[str, Any]:
    """The recipe values this run uses, as plain values; ``probe.<key>`` (and the optimiser's
    momentum and weight decay) set on the command line count as the recipe's."""
    kind, name = cfg.probe.kind, cfg.protocol.name
    if cfg.recipe.get("published", True) is False:
        raise ConfigError(f"protocol={name} probe={kind}: no published {kind} protocol exists "
                          f"(conf/recipe/probe/{kind}_{name}.yaml); run it with protocol=fast")
    settings = recipe_settings(cfg.recipe, cfg.probe, cfg.get("optimizer"))
    settings.setdefault("geometry", "train")
    if settings["geometry"] not in GEOMETRIES:
        raise ConfigError(f"recipe.geometry: expected one of {GEOMETRIES}, got {settings['geometry']!r}")
    return settings


def protocol_entry(cfg: DictConfig, settings: dict[str, Any]) -> dict[str, Any]:
    """results.json's ``protocol``: the run's recipe values and their deviations from the paper's."""
    if cfg.probe.kind == "knn":  # no published protocol to compare with: never comparable
        return protocol_record(cfg.protocol.name, settings, {}, extra=["no published knn protocol"])
    return protocol_record(cfg.protocol.name, settings, paper_recipe("probe", cfg.probe.kind))


def load_trunk(checkpoint: str | None, init: DictConfig | None, backbone: DictConfig | None,
               seed: int, init_data: DictConfig | None = None,
               geometry: str = "train") -> tuple[AlexNet, dict[str, Any]]:
    """The trunk to probe and a description of it: from a suite checkpoint, or an untrained init.

    init: an ``init`` group config: gaussian (the backbone's random init) or kraehenbuehl
    (data-dependent, measured on the first train images of ``init_data``, a ``data`` group config).
    geometry: "train" (as pretrained) or "deploy" (CaffeNet strides and padding, same weights).
    """
    over = {} if geometry == "train" else {"geometry": geometry}
    if checkpoint:
        opened = read_suite_checkpoint(checkpoint)
        meta = opened.info()
        desc = {k: meta[k] for k in ("method", "input_space", "source", "trunk")}
        return opened.load_trunk(**over), {**desc, "geometry": geometry}
    if init:
        if backbone is None:
            raise ConfigError("init=... needs a backbone config")
        torch.manual_seed(seed)
        trunk = instantiate(backbone, **over)
        initialiser = instantiate(init)

        def first_images(n: int) -> torch.Tensor:  # data-dependent (Krähenbühl): no labels used
            dm = instantiate(init_data)
            dm.prepare_data()
            dm.setup("fit")
            return dm.first_train_images(n)
        name = apply_init(trunk, initialiser, first_images)["name"]
        return trunk, {"method": f"{name}/{trunk.input_space}", "input_space": trunk.input_space,
                       "source": f"init={name}", "trunk": trunk.config, "geometry": geometry}
    raise ConfigError("probe: give checkpoint=PATH (a suite checkpoint) or init=gaussian|kraehenbuehl")


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
        raise ConfigError(f"probe.layers: the trunk has no layer(s) {bad}; it has {list(LAYERS)}")
    if cfg.probe.resize not in RESIZE_MODES:
        raise ConfigError(f"probe.resize: expected one of {RESIZE_MODES}, got {cfg.probe.resize!r}")
    if cfg.probe.kind in ("linear", "knn"):
        if dm.num_classes < 2:
            raise DataError(f"data.root={dm.root}: the probe needs labelled data (class folders); "
                            f"found {dm.num_classes} class(es)")
        if cfg.probe.get("num_classes") and cfg.probe.num_classes != dm.num_classes:
            raise ConfigError(f"probe.num_classes={cfg.probe.num_classes} but data.root={dm.root} has "
                              f"{dm.num_classes} classes")
        if not dm.val_samples:
            raise DataError(f"data.root={dm.root}: the val split is empty")


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


def schedule(settings: dict[str, Any], batches_per_epoch: int) -> tuple[Any, dict[str, Any]]:
    """(lr scheduler factory, the trainer's length arguments) of a recipe.

    ``max_steps`` runs that many iterations and validates once at the end; otherwise ``epochs``
    epochs. The step schedule (x``lr_gamma`` at each of ``lr_steps`` of ``schedule_iterations``) is
    scaled to the run's length (scale 1 when the run is as long as the schedule)."""
    max_steps, epochs = settings.get("max_steps"), settings.get("epochs")
    if not max_steps and not epochs:
        raise ConfigError("recipe.max_steps or recipe.epochs (probe.epochs) must be a positive number")
    steps = int(max_steps) if max_steps else int(epochs) * batches_per_epoch
    bounds = [int(b) for b in settings["lr_steps"]]
    values = [float(settings["lr_gamma"]) ** i for i in range(len(bounds) + 1)]
    factory = partial(piecewise_constant, boundaries=bounds, values=values,
                      scale=steps / float(settings["schedule_iterations"]))
    if max_steps:
        # validation once, after the last iteration (counted over epochs, not within one)
        length = dict(max_steps=steps, max_epochs=-1, check_val_every_n_epoch=None, val_check_interval=steps)
    else:
        length = dict(max_epochs=int(epochs), check_val_every_n_epoch=int(epochs))
    return factory, length


def fit_heads(cfg: DictConfig, settings: dict[str, Any], dims: dict[str, int], num_classes: int,
              train: DataLoader, vals: dict[str, DataLoader], extractor: FeatureExtractor | None,
              out_dir: Path, loggers: list) -> dict[str, float]:
    """Train one head per (layer, lr in the grid) together, in one pass over ``train``; evaluate every
    head on each loader of ``vals``. Returns {"probe/<val>/<layer>@<lr>/top1": ...}."""
    scheduler, length = schedule(settings, len(train))
    pl.seed_everything(cfg.seed, workers=True)  # head init must not depend on a feature-cache hit or miss
    module = LinearProbe(ProbeHeads(dims, num_classes, list(settings["lr_grid"])), instantiate(cfg.optimizer),
                         num_classes, scheduler=scheduler, extractor=extractor, val_names=tuple(vals),
                         bias_lr_mult=settings.get("bias_lr_mult", 1.0),
                         bias_weight_decay=settings.get("bias_weight_decay"))
    trainer = instantiate(cfg.trainer, **length, default_root_dir=str(out_dir),
                          logger=loggers or False, enable_checkpointing=False, num_sanity_val_steps=0,
                          precision=run_precision(cfg),
                          use_distributed_sampler=False)  # the loaders shard themselves, without padding
    trainer.fit(module, train_dataloaders=train, val_dataloaders=list(vals.values()))
    if trainer.is_global_zero:  # every trained head (layer x lr), e.g. to compare a DDP run with one process
        with atomic_writer(out_dir / "heads.pt") as f:
            torch.save(module.heads.state_dict(), f)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("probe/") and "loss" not in k}


def select_on_holdout(raw: dict[str, float], layers: list[str],
                      grid: list[float]) -> tuple[dict[str, float], dict[str, float]]:
    """Per layer, the learning rate whose head scores best on the held-out part of train; report that
    head's test numbers (the test split never influences the choice). Without a holdout (``raw``
    from the test loader alone, keys ``probe/<layer>@<lr>/...``) the grid must be one lr."""
    if not any(k.startswith("probe/holdout/") for k in raw):
        lr = grid[0]
        metrics = {f"probe/{l}/{m}": raw[f"probe/{l}@{lr:g}/{m}"] for l in layers for m in ("top1", "top5")}
        return metrics, {l: lr for l in layers}
    chosen = {l: max(grid, key=lambda lr: raw[f"probe/holdout/{l}@{lr:g}/top1"]) for l in layers}
    metrics = {}
    for l, lr in chosen.items():
        for m in ("top1", "top5"):
            metrics[f"probe/{l}/{m}"] = raw[f"probe/test/{l}@{lr:g}/{m}"]
        metrics[f"probe/{l}/holdout_top1"] = raw[f"probe/holdout/{l}@{lr:g}/top1"]
    return metrics, chosen


def probe_datamodule(cfg: DictConfig, settings: dict[str, Any]) -> Any:
    """The data at the recipe's crop and resize (null keeps data.crop_size / data.load_size); the
    sizes used are written back into ``settings`` for the record."""
    sizes = {k: settings[k] for k in ("crop_size", "load_size") if settings.get(k) is not None}
    dm = instantiate(cfg.data, **sizes)
    dm.prepare_data()
    dm.setup("fit")
    settings.update(crop_size=dm.crop_size, load_size=dm.load_size)
    return dm


def run_probe(cfg: DictConfig) -> dict[str, Any]:
    """One probe job; returns the results.json record."""
    clock = RunClock()
    out_dir = Path(cfg.paths.output_dir)
    settings = probe_settings(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    trunk, desc = load_trunk(cfg.get("checkpoint"), cfg.get("init"), cfg.get("backbone"), cfg.seed, cfg.data,
                             geometry=settings["geometry"])
    if cfg.probe.kind == "svm_voc07":
        return run_svm_probe(cfg, settings, trunk, desc, clock)
    # the recipe's batch is global: DDP ranks share it (each takes its strided part)
    per_device_batch(int(cfg.probe.batch_size), world_size(cfg.trainer), "probe.batch_size")
    dm = probe_datamodule(cfg, settings)
    check_request(cfg, dm, trunk)
    extractor = FeatureExtractor(trunk, cfg.probe.layers, cfg.probe.resize, desc["input_space"],
                                 pooling=cfg.probe.pooling)
    extractor = extractor.to(device_for(cfg.trainer.accelerator))
    skips = SkipCounter()
    transform = (f"{extractor.resize_key}|crop{dm.crop_size}|load{dm.load_size}|{desc['input_space']}"
                 f"|geometry={settings['geometry']}")
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
        metrics, chosen, raw = linear_metrics(cfg, settings, dm, extra["feature_dims"], extractor, stored, out_dir,
                                              loggers)
        extra.update(chosen_lr=chosen, all_heads=raw)
    record = probe_record(cfg, desc, dm, metrics, skips) | extra
    record["protocol"] = protocol_entry(cfg, settings)
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


def _fit_and_holdout(samples: list, settings: dict[str, Any], seed: int) -> tuple[list, list]:
    """(fit, holdout) parts of the train items; no holdout (all of train fitted) when the recipe's
    ``holdout_fraction`` is 0, which needs a single learning rate."""
    if float(settings["holdout_fraction"]) > 0:
        return split_holdout(samples, float(settings["holdout_fraction"]), seed)
    if len(settings["lr_grid"]) != 1:
        raise ConfigError(f"probe.holdout_fraction=0 trains on all of train, so nothing can choose among "
                          f"probe.lr_grid={settings['lr_grid']}: give one learning rate")
    return list(samples), []


def linear_metrics(cfg: DictConfig, settings: dict[str, Any], dm: Any, dims: dict[str, int],
                   extractor: FeatureExtractor, stored: Stored | None, out_dir: Path, loggers: list[Any]
                   ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Linear heads for every (layer, lr) at once; the lr per layer is chosen on the holdout.
    Returns (final metrics, chosen lr per layer, every head's raw metrics)."""
    bs, C = int(settings["batch_size"]), dm.num_classes
    if stored is not None:
        (train_x, train_y), (test_x, test_y) = stored
        fit_idx, hold_idx = (np.asarray(ix, dtype=np.int64)
                             for ix in _fit_and_holdout(list(range(len(train_y))), settings, cfg.seed))
        train = feature_loader(train_x, train_y, bs, True, fit_idx, cfg.seed)
        vals = {"test": feature_loader(test_x, test_y, bs, False)}
        if len(hold_idx):
            vals["holdout"] = feature_loader(train_x, train_y, bs, False, hold_idx)
        raw = fit_heads(cfg, settings, dims, C, train, vals, None, out_dir, loggers)
    else:  # streaming: random crops and flips through the frozen trunk every step
        fit_s, hold_s = _fit_and_holdout(dm.train_samples, settings, cfg.seed)
        vals = {"test": image_loader(dm.loader(dm.val_samples, False, bs), False, cfg.seed)}
        if hold_s:
            vals["holdout"] = image_loader(dm.loader(hold_s, False, bs), False, cfg.seed)
        train = image_loader(dm.loader(fit_s, True, bs), True, cfg.seed)
        raw = fit_heads(cfg, settings, dims, C, train, vals, extractor, out_dir, loggers)
    final, chosen = select_on_holdout(raw, list(cfg.probe.layers), list(settings["lr_grid"]))
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
        "setup": f"{cfg.probe.kind}, {cfg.probe.resize} resize, frozen trunk, "
                 f"{'cached centre-crop features' if cfg.probe.cache else 'random crops'}",
        "best_layer": best_layer, "metrics": metrics, "trunk": desc,
        "dataset": {"name": Path(str(dm.root)).name, "root": str(dm.root), "fingerprint": dm.fingerprint,
                    "num_train": len(dm.train_samples), "num_val": len(dm.val_samples),
                    "num_classes": dm.num_classes, "skipped_images": skips.count},
    }


IMAGE_FITS = ("center_crop", "global_resize")


def svm_transform(settings: dict[str, Any]) -> T.Compose:
    """uint8 image -> crop_size x crop_size: the short side resized to ``load_size`` (null:
    ``crop_size``), then a centre crop (``center_crop``) or the whole image squashed to the square
    (``global_resize``, Goyal et al.'s [scale, global_resize])."""
    crop, fit = int(settings["crop_size"]), settings.get("image_fit", "center_crop")
    if fit not in IMAGE_FITS:
        raise ConfigError(f"recipe.image_fit: expected one of {IMAGE_FITS}, got {fit!r}")
    first = T.Resize(int(settings.get("load_size") or crop), antialias=True)
    last = T.CenterCrop(crop) if fit == "center_crop" else T.Resize((crop, crop), antialias=True)
    return T.Compose([first, last])


def svm_layer_metrics(cfg: DictConfig, settings: dict[str, Any], train: tuple[dict[str, np.ndarray], np.ndarray],
                      test: tuple[dict[str, np.ndarray], np.ndarray]) -> tuple[dict[str, float], dict[str, Any]]:
    """Per layer, the VOC07 SVM protocol's mAP (and per-class APs, chosen costs, unconverged fits)."""
    (trx, tr_y), (tex, te_y) = train, test
    costs = list(settings["costs"]) if settings.get("costs") else DEFAULT_COSTS
    settings["costs"] = costs  # the grid used, for the record
    max_iter = int(settings.get("max_iter") or DEFAULT_MAX_ITER)
    metrics: dict[str, float] = {}
    per_class: dict[str, Any] = {}
    for layer in cfg.probe.layers:
        r = svm_voc07(trx[layer].astype("float32"), tr_y, tex[layer].astype("float32"), te_y, costs=costs,
                      folds=int(settings.get("folds", 3)), n_jobs=cfg.probe.n_jobs, seed=cfg.seed,
                      max_iter=max_iter, shared_dir=cfg.probe.get("shared_dir"))
        metrics[f"voc07/svm/{layer}/mAP"] = 100 * r["mAP"]
        metrics[f"voc07/svm/{layer}/mAP_11pt"] = 100 * r["mAP_voc07"]
        metrics[f"voc07/svm/{layer}/not_converged"] = r["not_converged"]
        per_class[layer] = {"ap": r["ap"], "costs": r["costs"], "class_names": list(r["class_names"]),
                            "not_converged": r["not_converged_per_class"]}
        if r["not_converged"]:  # an SVM cut short may score below its protocol value
            hit = ", ".join(f"{n} {k}" for n, k in zip(r["class_names"], r["not_converged_per_class"]) if k)
            warnings.warn(f"VOC07 SVM, layer {layer}: {r['not_converged']} of {r['fits']} fits stopped at "
                          f"probe.max_iter={max_iter} (per class: {hit})", stacklevel=3)
    return metrics, per_class


def run_svm_probe(cfg: DictConfig, settings: dict[str, Any], trunk: torch.nn.Module, desc: dict[str, Any],
                  clock: RunClock) -> dict[str, Any]:
    """``probe=svm_voc07``: per-layer VOC2007 linear SVMs (Goyal et al. 2019) on a frozen trunk."""
    out_dir = Path(cfg.paths.output_dir)
    root = resolve_voc(cfg.probe.voc_root, cfg.probe.year, cfg.paths.data_dir, cfg.probe.synthetic,
                       "probe.voc_root")
    crop = int(settings["crop_size"])
    transform = svm_transform(settings)
    sets = {split: VOCClassification(root, cfg.probe.year, split, transform) for split in ("trainval", "test")}
    device = device_for(cfg.trainer.accelerator)
    extractor = FeatureExtractor(trunk, cfg.probe.layers, cfg.probe.resize, desc["input_space"],
                                 pooling=cfg.probe.pooling).to(device)
    skips = SkipCounter()
    fp = fingerprint(sets["trainval"].paths + sets["test"].paths, root)
    cache = Path(cfg.paths.cache_dir) / "features" if cfg.probe.cache else None
    key = (f"voc|{extractor.resize_key}|{crop}|{desc['input_space']}|load={settings.get('load_size')}"
           f"|{settings.get('image_fit', 'center_crop')}|geometry={settings['geometry']}")
    features = Features(extractor, trunk_fingerprint(trunk), key, cache, fp, skips)
    loaded = {}
    for split, ds in sets.items():
        loader = DataLoader(ds, batch_size=cfg.probe.batch_size, num_workers=cfg.probe.num_workers,
                            collate_fn=collate_voc)
        loaded[split] = features.get(f"voc{cfg.probe.year}-{split}", loader, len(ds))
    tr_y, te_y = loaded["trainval"][1], loaded["test"][1]
    metrics, per_class = svm_layer_metrics(cfg, settings, loaded["trainval"], loaded["test"])
    best = max(cfg.probe.layers, key=lambda l: metrics[f"voc07/svm/{l}/mAP"])
    record = {
        "kind": "probe", "probe": "svm_voc07", "method": desc["method"], "status": "completed",
        "setup": f"VOC07 linear SVM (Goyal et al.), {cfg.probe.resize} resize, crop {crop}",
        "protocol": protocol_entry(cfg, settings), "feature_dims": extractor.dims(crop),
        "best_layer": best, "metrics": metrics, "per_class": per_class, "trunk": desc,
        "dataset": {"name": f"VOC{cfg.probe.year}" + ("-synthetic" if cfg.probe.voc_root == "synthetic" else ""),
                    "root": str(root), "fingerprint": fp, "num_train": len(tr_y), "num_val": len(te_y),
                    "skipped_images": skips.count},
        "feature_cache": {"enabled": bool(cfg.probe.cache), "hits": features.hits, "misses": features.misses},
    }
    return finish_record(record, clock, cfg, out_dir)
