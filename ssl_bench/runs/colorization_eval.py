"""The colorization-quality run (``ssl-bench evaluate-colorization``): AuC raw / rebalanced against the
grey / random / ground-truth references and, with a classifier, the semantic-interpretability top-1,
in one pass over the val split of ``cfg.data``; writes results.json (kind "colorization_eval").

The metrics are defined in :mod:`ssl_bench.colorization.quality`.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from ssl_bench.colorization.colorize import DECODE_METHODS, load_colorizer, method_name
from ssl_bench.colorization.quality import PROTOCOL, QualityAccumulator, load_classifier
from ssl_bench.data.images import SkipCounter
from ssl_bench.errors import ConfigError, DataError
from ssl_bench.pretext.colorization import ColorizationPretext, training_prior
from ssl_bench.report.protocol import protocol_record
from ssl_bench.runs.common import RunClock, device_for, finish_record

__all__ = ["run"]


def _decoding(cfg: DictConfig) -> tuple[str, float]:
    decode, T = str(cfg.decode), float(cfg.T)
    if decode not in DECODE_METHODS:
        raise ConfigError(f"decode: expected one of {', '.join(DECODE_METHODS)}, got {decode!r}")
    if not T > 0:
        raise ConfigError(f"T must be > 0, got {T}")
    return decode, T


def _device(name: str | None) -> torch.device:
    """``device``: auto (the GPU when there is one), or a torch device name."""
    return torch.device(device_for("auto") if name in (None, "auto") else name)


def _classifier(cfg: DictConfig, device: torch.device) -> tuple[nn.Module | None, dict[str, Any] | None]:
    if not cfg.get("classifier"):
        return None, None
    classifier, desc = load_classifier(cfg.classifier)
    return classifier.to(device), desc


def _eval_samples(cfg: DictConfig, dm: Any, cdesc: dict[str, Any] | None) -> list[tuple[Path, int]]:
    """The val split (or ``max_images`` of it, a fixed random subset), checked against the classifier."""
    samples = list(dm.val_samples)
    if not samples:
        raise DataError(f"data.root={dm.root}: the val split is empty")
    if cfg.get("max_images") and len(samples) > cfg.max_images:
        samples = sorted(random.Random(cfg.seed).sample(samples, int(cfg.max_images)))
    if cdesc is not None:
        if any(label < 0 for _, label in samples):
            raise DataError(f"classifier=...: data.root={dm.root} has no labels (data.layout=folder); "
                            "the classifier test needs class folders (data.layout=imagefolder)")
        if cdesc["num_classes"] != dm.num_classes:
            raise ConfigError(f"classifier={cfg.classifier} has {cdesc['num_classes']} classes but "
                              f"data.root={dm.root} has {dm.num_classes}")
    return samples


def _training_prior(cfg: DictConfig, dm: Any, ab_stride: int) -> torch.Tensor:
    """The training set's ab prior (cached with the same name as pretraining's, so usually a hit)."""
    return training_prior(dm, cfg.paths.cache_dir, ab_stride, cfg.get("prior_sigma", 5.0), cfg.get("prior_images"))


def _score(dm: Any, samples: list[tuple[Path, int]], batch_size: int, scores: QualityAccumulator,
           device: torch.device) -> SkipCounter:
    """Feed every decodable image of ``samples`` to ``scores``; returns the unreadable ones' count."""
    skips = SkipCounter()
    for batch in dm.loader(samples, False, batch_size):
        skips.add(batch["skipped"])
        if not batch["image"].shape[0]:
            continue
        labels = batch["label"].to(device) if scores.classifier is not None else None
        scores.update(batch["image"].to(device, non_blocking=True), labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return skips


# What paper Table 1 measured (docs/protocols.md): ImageNet val images, colours decoded by the annealed
# mean at T = 0.38, a VGG-16 trained on colour ImageNet as the fixed classifier.
PAPER_QUALITY = {"data": "imagenet_val", "decoding": "annealed mean T=0.38", "classifier": "vgg16"}


def _decoding_text(model: ColorizationPretext, decode: str, T: float) -> str:
    if model.objective.kind == "regression":
        return "direct ab regression (no decoding)"
    return f"annealed mean T={T:g}" if decode == "annealed_mean" else decode


def _setup(model: ColorizationPretext, dm: Any, decode: str, T: float, cdesc: dict[str, Any] | None) -> str:
    classifier_text = (f"; classifier top-1: {cdesc['kind']} ({cdesc['num_classes']} classes)"
                       if cdesc else "; no classifier")
    return f"{PROTOCOL} ({dm.crop_size} px); decoding: {_decoding_text(model, decode, T)}{classifier_text}"


def _protocol(model: ColorizationPretext, dm: Any, decode: str, T: float,
              cdesc: dict[str, Any] | None) -> dict[str, Any]:
    """The protocol record: named ``paper`` only when data, decoding and classifier are Table 1's. The
    data set is named by its folder, so no run is taken for Table 1's ImageNet val set unless the user
    names the folder so: a quality number is never put beside the paper's by guesswork."""
    recipe = {"data": Path(str(dm.root)).name, "decoding": _decoding_text(model, decode, T),
              "classifier": cdesc["kind"] if cdesc else None}
    record = protocol_record("fast", recipe, PAPER_QUALITY)
    return {**record, "name": "paper" if not record["deviations"] else "fast"}


def _dataset(dm: Any, num_eval: int, skipped: int) -> dict[str, Any]:
    return {"name": Path(str(dm.root)).name, "root": str(dm.root), "fingerprint": dm.fingerprint,
            "num_train": len(dm.train_samples), "num_val": len(dm.val_samples), "num_eval": num_eval,
            "num_classes": dm.num_classes, "crop_size": dm.crop_size, "skipped_images": skipped}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Colorization quality of ``cfg.checkpoint`` on the val split of ``cfg.data``; writes and returns
    the results.json record."""
    clock = RunClock()
    decode, T = _decoding(cfg)
    torch.manual_seed(cfg.seed)
    device = _device(cfg.get("device"))
    model = load_colorizer(cfg.checkpoint, device)  # fail fast, before any data work
    classifier, cdesc = _classifier(cfg, device)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    samples = _eval_samples(cfg, dm, cdesc)
    tp = time.perf_counter()
    prior = _training_prior(cfg, dm, model.ab_stride)
    tl = time.perf_counter()
    scores = QualityAccumulator(model, prior, decode, T, cfg.seed, classifier)
    skips = _score(dm, samples, int(cfg.batch_size), scores, device)
    loop_s = time.perf_counter() - tl
    if not scores.images:
        raise DataError(f"data.root={dm.root}: no decodable image in the val split ({skips.count} unreadable)")
    metrics = {**scores.metrics(), "color/images_per_s": scores.images / loop_s if loop_s > 0 else None}
    record = {
        "kind": "colorization_eval", "task": "auc_classifier", "method": method_name(model), "status": "completed",
        "protocol": _protocol(model, dm, decode, T, cdesc), "setup": _setup(model, dm, decode, T, cdesc),
        "metrics": metrics,
        "checkpoint": str(cfg.checkpoint), "trunk": model.source_meta,
        "decode": decode, "T": T, "classifier": cdesc,
        "prior": {"sigma": cfg.get("prior_sigma", 5.0), "ab_stride": model.ab_stride,
                  "images": cfg.get("prior_images"), "nonzero_bins": int((prior > 0).sum())},
        "dataset": _dataset(dm, scores.images, skips.count),
        "timing": {"prior_s": tl - tp, "eval_loop_s": loop_s},
    }
    return finish_record(record, clock, cfg, Path(cfg.paths.output_dir))
