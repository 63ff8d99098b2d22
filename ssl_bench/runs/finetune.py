"""The transfer run: prepare a trunk's weights, fine-tune it on a PASCAL VOC task, write results.json.

``ssl-bench finetune task=voc_cls|voc_det|voc_seg checkpoint=PATH voc_root=DIR`` (or ``init=...`` for
the untrained rows, ``voc_root=synthetic`` for the generated VOC-format tree). Weight preparation
(docs/protocols.md §1.6) follows the authors: batch norm absorbed into the convolutions, Krähenbühl rescaling,
fc6/fc7 as fully connected layers for the detector, and the gray/color input modes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torchvision.transforms.functional as TF
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint

from ssl_bench.data.images import DECODE_ERRORS, decode_rgb
from ssl_bench.data.voc import read_image_set
from ssl_bench.data.voc_synthetic import resolve_voc
from ssl_bench.metrics import voc_prefix
from ssl_bench.models.checkpoint import check_state_dict, load_suite_trunk, read_checkpoint
from ssl_bench.models.init import apply_init
from ssl_bench.models.inputs import trunk_input
from ssl_bench.models.prepare import fc_layers, prepare_for_transfer
from ssl_bench.report.tracking import finish_run
from ssl_bench.runs.common import RunClock, finish_record
from ssl_bench.runs.pretrain import build_loggers, resolve_resume

PROTOCOL = "PASCAL VOC fine-tuning: cls 10-crop (fc6-8 / all), Faster R-CNN det (RPN proposals), FCN-32s seg"



def train_images(voc: Path, cfg: DictConfig, n: int) -> torch.Tensor:
    """The first ``n`` decodable images of the task's train split, resized and centre-cropped to
    ``finetune.rescale_size``: uint8 n x 3 x S x S (statistics for Krähenbühl; no labels are read)."""
    task = "Segmentation" if cfg.task.name == "voc_seg" else "Main"
    ids = read_image_set(voc, cfg.task.year, cfg.task.datamodule.train_split, task)
    size = int(cfg.finetune.rescale_size)
    images = []
    for image_id in ids:
        try:
            img = decode_rgb(voc / "JPEGImages" / f"{image_id}.jpg")
        except DECODE_ERRORS:
            continue
        images.append(TF.center_crop(TF.resize(img, size, antialias=True), size))
        if len(images) >= n:
            break
    if not images:
        raise FileNotFoundError(f"{voc}/JPEGImages: no decodable image for the rescaling statistics")
    return torch.stack(images)


def load_source(cfg: DictConfig, voc: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(prepared trunk, description): from a suite checkpoint, or an untrained init (init group)."""
    decoded: list[torch.Tensor] = []

    def images(n: int) -> torch.Tensor:  # decoded once for the init and the rescaling
        if len(decoded) < n:
            decoded[:] = list(train_images(voc, cfg, n))
        return torch.stack(decoded[:n])

    if cfg.get("checkpoint"):
        trunk, meta = load_suite_trunk(cfg.checkpoint)
        method, source = meta["method"], str(cfg.checkpoint)
    elif cfg.get("init"):
        torch.manual_seed(cfg.seed)
        trunk = instantiate(cfg.backbone)
        name = apply_init(trunk, instantiate(cfg.init), images)["name"]
        method, source, meta = f"{name}/{trunk.input_space}", f"init={name}", {}
    else:
        raise ValueError("finetune: give checkpoint=PATH (a suite checkpoint) or init=gaussian|kraehenbuehl")
    f = cfg.finetune
    rescale = trunk_input(images(f.rescale_images), trunk.input_space) if f.rescale else None
    prepared = prepare_for_transfer(trunk, f.mode, absorb_bn=f.absorb_bn, rescale_images=rescale)
    return prepared, {"method": method, "source": source, "input_space": prepared.input_space,
                      "mode": f.mode, "absorb_bn": bool(f.absorb_bn), "rescaled": bool(f.rescale),
                      "trunk": getattr(trunk, "config", {}), "pretrain_meta": meta}


def build_task(cfg: DictConfig, trunk: torch.nn.Module) -> pl.LightningModule:
    extra: dict[str, Any] = {}
    if cfg.task.name == "voc_det":
        extra["fc6"], extra["fc7"] = fc_layers(getattr(trunk, "trunk", trunk))
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    return instantiate(cfg.task.module, trunk=trunk, optimizer=instantiate(cfg.optimizer),
                       scheduler=scheduler, **extra)


def task_key(cfg: DictConfig) -> str:
    """The leaderboard's column of this run: voc_cls_fc6, voc_cls_all, voc_det, voc_seg."""
    if cfg.task.name == "voc_cls":
        return "voc_cls_fc6" if cfg.task.module.train_from == "fc6" else "voc_cls_all"
    return str(cfg.task.name)


def finetune(cfg: DictConfig) -> dict[str, Any]:
    """Run one fine-tuning job; returns the results.json record."""
    clock = RunClock()
    out_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    voc = resolve_voc(cfg.voc_root, cfg.task.year, cfg.paths.data_dir, cfg.synthetic_voc, "voc_root")
    trunk, desc = load_source(cfg, voc)
    dm = instantiate(cfg.task.datamodule, root=str(voc))
    model = build_task(cfg, trunk)
    ckpt_dir = out_dir / "checkpoints"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="step{step:07d}", save_last=True, save_top_k=1,
                                 monitor=None, every_n_train_steps=cfg.save_every_n_train_steps,
                                 save_on_train_epoch_end=True, auto_insert_metric_name=False)
    loggers = build_loggers(cfg)
    trainer = instantiate(cfg.trainer, default_root_dir=str(out_dir), precision=cfg.precision,
                          callbacks=[checkpoint], logger=loggers)
    resume = resolve_resume(cfg.ckpt_path, out_dir)
    if resume:
        check_state_dict(model, read_checkpoint(resume)["state_dict"], resume)
    t_fit = time.perf_counter()
    trainer.fit(model, datamodule=dm, ckpt_path=resume)
    fit_s = time.perf_counter() - t_fit
    t_test = time.perf_counter()
    trainer.test(model, datamodule=dm, verbose=False)
    test_s = time.perf_counter() - t_test
    key = task_key(cfg)
    metrics = {k: float(v) for k, v in model.results.items()}
    prefix = f"{voc_prefix(cfg.task.year)}/{key.removeprefix('voc_')}"
    metrics[f"{prefix}/fit_s"], metrics[f"{prefix}/test_s"] = fit_s, test_s
    record = {
        "kind": "finetune", "task": key, "method": desc["method"], "status": "completed",
        "protocol": f"{PROTOCOL}; {desc['mode']} input" + ("; rescaled (Krähenbühl) †" if desc["rescaled"] else ""),
        "metrics": metrics, "trunk": desc,
        "dataset": {"name": "PASCAL VOC" + (" (synthetic)" if str(cfg.voc_root) == "synthetic" else ""),
                    "root": str(voc), "year": str(cfg.task.year),
                    "skipped_images": int(getattr(getattr(model, "skips", None), "count", 0))},
        "checkpoint": str((ckpt_dir / "last.ckpt").relative_to(out_dir)),
    }
    record = finish_record(record, clock, cfg, out_dir, write=trainer.is_global_zero)
    finish_run(loggers, record, out_dir / "results.json")
    return record
