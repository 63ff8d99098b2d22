"""``probe=svm_voc07``: per-layer VOC2007 linear SVMs (Goyal et al. 2019) on a frozen trunk."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from torchvision.transforms import v2 as T

from ssl_bench.data.images import SkipCounter, fingerprint
from ssl_bench.data.voc import VOCClassification, collate_voc, voc_root, write_synthetic_voc
from ssl_bench.evaluation.feature_cache import trunk_fingerprint
from ssl_bench.evaluation.harness import Features
from ssl_bench.evaluation.probes import FeatureExtractor
from ssl_bench.evaluation.svm_voc07 import DEFAULT_COSTS, svm_voc07
from ssl_bench.results import write_results


def resolve_voc(cfg: DictConfig) -> Path:
    """``probe.voc_root``: a VOCdevkit (or VOC2007) folder, or "synthetic" for the generated tree."""
    if cfg.probe.voc_root == "synthetic":
        s = cfg.probe.synthetic
        out = Path(cfg.paths.data_dir) / f"voc_synthetic_{s.num_trainval}_{s.num_test}_px{s.image_size}_seed{s.seed}"
        return write_synthetic_voc(out, s.num_trainval, s.num_test, s.image_size, s.seed, cfg.probe.year)
    try:
        return voc_root(cfg.probe.voc_root, cfg.probe.year)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"probe.voc_root: {e}") from e


def run_svm_probe(cfg: DictConfig, trunk: torch.nn.Module, desc: dict[str, Any], started: datetime,
                  t0: float) -> dict[str, Any]:
    out_dir = Path(cfg.paths.output_dir)
    root = resolve_voc(cfg)
    crop = cfg.probe.crop_size
    transform = T.Compose([T.Resize(crop, antialias=True), T.CenterCrop(crop)])
    sets = {split: VOCClassification(root, cfg.probe.year, split, transform) for split in ("trainval", "test")}
    device = "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda") else "cpu"
    extractor = FeatureExtractor(trunk, cfg.probe.layers, cfg.probe.resize, desc["input_space"]).to(device)
    skips = SkipCounter()
    fp = fingerprint(sets["trainval"].paths + sets["test"].paths, root)
    cache = Path(cfg.paths.cache_dir) / "features" if cfg.probe.cache else None
    features = Features(extractor, trunk_fingerprint(trunk), f"voc|{cfg.probe.resize}|{crop}|{desc['input_space']}",
                        cache, fp, skips)
    loaded = {}
    for split, ds in sets.items():
        loader = DataLoader(ds, batch_size=cfg.probe.batch_size, num_workers=cfg.probe.num_workers,
                            collate_fn=collate_voc)
        loaded[split] = features.get(f"voc{cfg.probe.year}-{split}", loader, len(ds))
    (trx, tr_y), (tex, te_y) = loaded["trainval"], loaded["test"]
    costs = list(cfg.probe.costs) if cfg.probe.get("costs") else DEFAULT_COSTS
    metrics: dict[str, float] = {}
    per_class: dict[str, Any] = {}
    for layer in cfg.probe.layers:
        r = svm_voc07(trx[layer].astype("float32"), tr_y, tex[layer].astype("float32"), te_y, costs=costs,
                      n_jobs=cfg.probe.n_jobs, seed=cfg.seed)
        metrics[f"voc07/svm/{layer}/mAP"] = 100 * r["mAP"]
        metrics[f"voc07/svm/{layer}/mAP_11pt"] = 100 * r["mAP_voc07"]
        per_class[layer] = {"ap": r["ap"], "costs": r["costs"], "class_names": list(r["class_names"])}
    best = max(cfg.probe.layers, key=lambda l: metrics[f"voc07/svm/{l}/mAP"])
    record = {
        "kind": "probe", "probe": "svm_voc07", "method": desc["method"], "status": "completed",
        "protocol": f"VOC07 linear SVM (Goyal et al.), {cfg.probe.resize} resize, crop {crop}",
        "best_layer": best, "metrics": metrics, "per_class": per_class, "trunk": desc,
        "dataset": {"name": f"VOC{cfg.probe.year}" + ("-synthetic" if cfg.probe.voc_root == "synthetic" else ""),
                    "root": str(root), "fingerprint": fp, "num_train": len(tr_y), "num_val": len(te_y),
                    "skipped_images": skips.count},
        "feature_cache": {"enabled": bool(cfg.probe.cache), "hits": features.hits, "misses": features.misses},
        "seed": cfg.seed, "started": started.isoformat(), "finished": datetime.now(started.tzinfo).isoformat(),
        "wall_time_s": time.perf_counter() - t0, "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_results(out_dir / "results.json", record)
    return record
