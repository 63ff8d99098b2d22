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
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from ssl_bench.data.images import DECODE_ERRORS, decode_rgb
from ssl_bench.data.voc import read_image_set
from ssl_bench.data.voc_synthetic import resolve_voc
from ssl_bench.errors import ConfigError, MissingDataError
from ssl_bench.metrics import voc_prefix
from ssl_bench.models.checkpoint import check_state_dict, read_checkpoint, read_suite_checkpoint
from ssl_bench.models.init import apply_init
from ssl_bench.models.inputs import trunk_input
from ssl_bench.models.prepare import fc_layers, prepare_for_transfer
from ssl_bench.report.protocol import paper_recipe, protocol_record
from ssl_bench.report.tracking import finish_run
from ssl_bench.runs.common import RunClock, finish_record, run_precision
from ssl_bench.runs.pretrain import build_loggers, resolve_resume
from ssl_bench.transfer.voc_cls import write_test_scores
from ssl_bench.transfer.voc_seg import VOCSegmentationDataset

RESCALES: tuple[str, ...] = ("calibrate", "per_unit", "none")
# recipe key -> the config value it sets (conf/finetune.yaml and conf/task/*.yaml interpolate the recipe)
RECIPE_PATHS = {"lr": "optimizer.lr", "momentum": "optimizer.momentum", "weight_decay": "optimizer.weight_decay",
                "batch_size": "task.datamodule.batch_size", "max_steps": "trainer.max_steps",
                "max_epochs": "trainer.max_epochs", "lr_step": "scheduler.step_size", "lr_gamma": "scheduler.gamma",
                "grad_clip": "trainer.gradient_clip_val", "geometry": "finetune.geometry",
                "dropout": "finetune.dropout", "accumulate_grad_batches": "trainer.accumulate_grad_batches"}
TASK_RECIPE_PATHS = {
    "voc_cls": {k: f"task.module.{k}" for k in ("bias_lr_mult", "bias_decay_mult", "loss_normalization", "fc8_std",
                                                 "fc8_bias", "metric", "test_reduce")}
    | {k: f"task.datamodule.{k}" for k in ("augment", "load_size", "crop_size", "scale_range", "test_augment",
                                            "test_crops")},
    "voc_det": {k: f"task.datamodule.{k}" for k in ("train_scales", "train_max_size", "rois_per_batch", "fg_fraction")}
    | {k: f"task.module.{k}" for k in ("bias_lr_mult", "bias_decay_mult", "test_nms", "score_thresh", "max_per_image")}
    | {"test_scale": "task.datamodule.min_size", "max_size": "task.datamodule.max_size",
       "train_difficult": "task.datamodule.use_difficult_in_training", "proposals": "task.datamodule.detector"},
    "voc_seg": {"crop_size": "task.datamodule.crop_size", "train_list": "task.datamodule.train_split",
                "test_list": "task.datamodule.test_split", "stride": "task.module.stride",
                "bias_lr_mult": "task.module.bias_lr_mult", "bias_decay_mult": "task.module.bias_decay_mult"},
}
# what the code does whatever the recipe asks (recorded, so a paper run shows it): the RPN detector
# (recipe.proposals=rpn) has torchvision's NMS 0.5, biases as weights, and trains at the test scale
FIXED_BEHAVIOUR = {
    "voc_det": {"bias_lr_mult": 1.0, "bias_decay_mult": 1.0, "fg_fraction": 0.25, "test_nms": 0.5},
}


def fixed_behaviour(cfg: DictConfig) -> dict[str, Any]:
    """FIXED_BEHAVIOUR of the task; for the RPN detector also its single training scale."""
    if cfg.task.name != "voc_det":
        return dict(FIXED_BEHAVIOUR.get(cfg.task.name, {}))
    if str(cfg.task.datamodule.detector) != "rpn":
        return {}
    d = cfg.task.datamodule
    return {**FIXED_BEHAVIOUR["voc_det"], "train_scales": [int(d.min_size)], "train_max_size": int(d.max_size)}



def train_image_paths(voc: Path, cfg: DictConfig) -> list[Path]:
    """The task's training images in list order (SBD's images for the segmentation list sbd_train)."""
    split = str(cfg.task.datamodule.train_split)
    if cfg.task.name == "voc_seg" and split == "sbd_train":
        dataset = VOCSegmentationDataset(voc, cfg.task.year, split, cfg.task.datamodule.sbd_root)
        return [img for _, img, _ in dataset.samples]
    task = "Segmentation" if cfg.task.name == "voc_seg" else "Main"
    return [voc / "JPEGImages" / f"{i}.jpg" for i in read_image_set(voc, cfg.task.year, split, task)]


def train_images(voc: Path, cfg: DictConfig, n: int) -> torch.Tensor:
    """The first ``n`` decodable images of the task's train split, resized and centre-cropped to
    ``finetune.rescale_size``: uint8 n x 3 x S x S (statistics for Krähenbühl; no labels are read)."""
    size = int(cfg.finetune.rescale_size)
    images = []
    for path in train_image_paths(voc, cfg):
        try:
            img = decode_rgb(path)
        except DECODE_ERRORS:
            continue
        images.append(TF.center_crop(TF.resize(img, size, antialias=True), size))
        if len(images) >= n:
            break
    if not images:
        raise MissingDataError(f"{voc}/JPEGImages: no decodable image for the rescaling statistics")
    return torch.stack(images)


def load_source(cfg: DictConfig, voc: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(prepared trunk, description): from a suite checkpoint, or an untrained init (init group)."""
    decoded: list[torch.Tensor] = []

    def images(n: int) -> torch.Tensor:  # decoded once for the init and the rescaling
        if len(decoded) < n:
            decoded[:] = list(train_images(voc, cfg, n))
        return torch.stack(decoded[:n])

    f = cfg.finetune
    # the recipe's downstream net (same weights)
    geometry = FIXED_BEHAVIOUR.get(cfg.task.name, {}).get("geometry", str(f.geometry))
    shape = {"geometry": geometry, "dropout": float(f.dropout)}
    if cfg.get("checkpoint"):
        opened = read_suite_checkpoint(cfg.checkpoint)
        trunk, meta = opened.load_trunk(**shape), opened.info()
        method, source = meta["method"], str(cfg.checkpoint)
    elif cfg.get("init"):
        torch.manual_seed(cfg.seed)
        trunk = instantiate(cfg.backbone, **shape)
        name = apply_init(trunk, instantiate(cfg.init), images)["name"]
        method, source, meta = f"{name}/{trunk.input_space}", f"init={name}", {}
    else:
        raise ConfigError("finetune: give checkpoint=PATH (a suite checkpoint) or init=gaussian|kraehenbuehl")
    rescale = rescale_kind(f.rescale)
    batch = trunk_input(images(f.rescale_images), trunk.input_space) if rescale != "none" else None
    prepared, rescale = prepare(trunk, f, rescale, batch)
    return prepared, {"method": method, "source": source, "input_space": prepared.input_space,
                      "mode": f.mode, "absorb_bn": bool(f.absorb_bn), "rescaled": rescale != "none",
                      "rescale": rescale, "geometry": shape["geometry"], "dropout": shape["dropout"],
                      "trunk": getattr(trunk, "config", {}), "pretrain_meta": meta}


def rescale_kind(value: Any) -> str:
    """finetune.rescale as one of RESCALES (true / false are read as per_unit / none)."""
    kind = {True: "per_unit", False: "none"}.get(value, value) if isinstance(value, bool) else str(value)
    if kind not in RESCALES:
        raise ConfigError(f"finetune.rescale: expected one of {RESCALES}, got {value!r}")
    return kind


def prepare(trunk: torch.nn.Module, f: DictConfig, rescale: str,
            images: torch.Tensor | None) -> tuple[torch.nn.Module, str]:
    """(prepared trunk, the rescaling applied): `prepare_for_transfer` with the recipe's rescaling."""
    return prepare_for_transfer(trunk, f.mode, absorb_bn=f.absorb_bn, rescale=rescale, rescale_images=images), rescale


def build_task(cfg: DictConfig, trunk: torch.nn.Module) -> pl.LightningModule:
    extra: dict[str, Any] = {}
    if cfg.task.name == "voc_det":
        extra["fc6"], extra["fc7"] = fc_layers(getattr(trunk, "trunk", trunk))
    if cfg.task.name == "voc_seg" and float(cfg.finetune.dropout) > 0:
        extra["dropout"] = 0.0  # the trunk's drop6/drop7 are FCN's; a second drop7 would drop fc7 twice
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    return instantiate(cfg.task.module, trunk=trunk, optimizer=instantiate(cfg.optimizer),
                       scheduler=scheduler, **extra)


def detection_proposals(cfg: DictConfig, voc: Path) -> dict[str, Any]:
    """{} unless the task is Fast R-CNN detection; then {"proposals": folder, "synthetic": bool}
    (stand-ins on the synthetic VOC tree, else ``task.proposals`` or a ConfigError naming it)."""
    if cfg.task.name != "voc_det" or str(cfg.task.datamodule.detector) == "rpn":
        return {}
    from ssl_bench.transfer.fast_rcnn_data import resolve_proposals
    d = cfg.task.datamodule
    folder, synthetic = resolve_proposals(cfg.task.get("proposals"), voc, str(cfg.voc_root) == "synthetic",
                                          cfg.task.year, (str(d.train_split), str(d.test_split)))
    return {"proposals": folder, "synthetic": synthetic}


def task_key(cfg: DictConfig) -> str:
    """The leaderboard's column of this run: voc_cls_fc6, voc_cls_all, voc_det, voc_seg."""
    if cfg.task.name == "voc_cls":
        return "voc_cls_fc6" if train_layers(cfg) == "fc6-8" else "voc_cls_all"
    return str(cfg.task.name)


def train_layers(cfg: DictConfig) -> str:
    """task.module.train_from in the recipe's words: fc6-8 or all (fc6 / conv1 are accepted too)."""
    value = str(cfg.task.module.train_from)
    return {"fc6": "fc6-8", "conv1": "all"}.get(value, value)


def effective_recipe(cfg: DictConfig, desc: dict[str, Any]) -> dict[str, Any]:
    """The recipe as run: each recipe key read back from the config value it sets (so an override of
    that value shows), and fixed by the code where the code does not offer the recipe's choice."""
    recipe = OmegaConf.to_container(cfg.recipe, resolve=True)
    for key, path in {**RECIPE_PATHS, **TASK_RECIPE_PATHS.get(cfg.task.name, {})}.items():
        if key in recipe:
            value = OmegaConf.select(cfg, path, default=None)
            recipe[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    recipe.update(fixed_behaviour(cfg))
    if cfg.task.name == "voc_cls":
        recipe["train_layers"] = train_layers(cfg)
    recipe["rescale"] = desc["rescale"]
    return recipe


def protocol_entry(cfg: DictConfig, desc: dict[str, Any]) -> dict[str, Any]:
    """results.json's ``protocol``: the recipe as run and its deviations from the published one (both
    published classification settings, fc6-8 and all, count as the paper's)."""
    recipe, paper = effective_recipe(cfg, desc), paper_recipe("finetune", cfg.task.name)
    if cfg.task.name == "voc_cls" and recipe.get("train_layers") in ("fc6-8", "all"):
        paper["train_layers"] = recipe["train_layers"]
    extra = [] if desc["mode"] in ("auto", "gray", "rgb", "lab") else [f"finetune.mode={desc['mode']}"]
    extra += ["synthetic_proposals"] if desc.get("synthetic_proposals") else []
    return protocol_record(cfg.protocol.name, recipe, paper, extra)


def finetune(cfg: DictConfig) -> dict[str, Any]:
    """Run one fine-tuning job; returns the results.json record."""
    clock = RunClock()
    out_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    voc = resolve_voc(cfg.voc_root, cfg.task.year, cfg.paths.data_dir, cfg.synthetic_voc, "voc_root")
    proposals = detection_proposals(cfg, voc)
    trunk, desc = load_source(cfg, voc)
    desc["synthetic_proposals"] = proposals.pop("synthetic", False)
    dm = instantiate(cfg.task.datamodule, root=str(voc), **proposals)
    model = build_task(cfg, trunk)
    ckpt_dir = out_dir / "checkpoints"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="step{step:07d}", save_last=True, save_top_k=1,
                                 monitor=None, every_n_train_steps=cfg.save_every_n_train_steps,
                                 save_on_train_epoch_end=True, auto_insert_metric_name=False)
    loggers = build_loggers(cfg)
    trainer = instantiate(cfg.trainer, default_root_dir=str(out_dir), precision=run_precision(cfg),
                          callbacks=[checkpoint], logger=loggers,
                          use_distributed_sampler=False)  # the VOC loaders shard themselves, without padding
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
        "protocol": protocol_entry(cfg, desc),
        "metrics": metrics, "trunk": desc,
        "dataset": {"name": "PASCAL VOC" + (" (synthetic)" if str(cfg.voc_root) == "synthetic" else ""),
                    "root": str(voc), "year": str(cfg.task.year),
                    "skipped_images": int(getattr(getattr(model, "skips", None), "count", 0))},
        "checkpoint": str((ckpt_dir / "last.ckpt").relative_to(out_dir)),
    }
    if cfg.task.name == "voc_cls" and trainer.is_global_zero:
        write_test_scores(out_dir / "test_scores.npz", [dm.test_ids()[i] for i in model.test_index],
                          model.test_scores, model.test_labels, model.test_scores_1crop)
        record["test_scores"] = "test_scores.npz"
    record = finish_record(record, clock, cfg, out_dir, write=trainer.is_global_zero)
    finish_run(loggers, record, out_dir / "results.json")
    return record
