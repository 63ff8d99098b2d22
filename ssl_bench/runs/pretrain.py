"""The pretraining run: build the configured parts, fit, write checkpoint, samples and results.json."""

from __future__ import annotations

import random
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ssl_bench.errors import ConfigError
from ssl_bench.models.checkpoint import check_state_dict, read_checkpoint
from ssl_bench.models.init import apply_init
from ssl_bench.pretext.callbacks import AtomicCheckpointIO, CheckpointMetadata
from ssl_bench.pretext.common import NonFiniteLossError
from ssl_bench.report.tracking import finish_run, wandb_run_kwargs
from ssl_bench.runs.common import RunClock, finish_record, run_precision


class RngState(pl.Callback):
    """Saves the Python, NumPy and torch RNG states in every checkpoint and puts them back when a
    resumed run starts, so that it draws what the uninterrupted run drew from there on.

    Lightning creates a resumed run's first train iterator (which draws the shuffling seed) right
    after the sanity check and before ``on_train_start``, so the states go back at fit start and
    again after the sanity check (which draws from the RNG too)."""

    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        # plain types and tensors only: Lightning reads checkpoints with torch.load(weights_only=True)
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state = {"python": random.getstate(), "torch": torch.get_rng_state(),
                 "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pending = state_dict

    def _restore(self) -> None:
        if self.pending is None:
            return
        random.setstate(self.pending["python"])
        name, keys, pos, has_gauss, cached = self.pending["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(self.pending["torch"])
        if "cuda" in self.pending and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.pending["cuda"])

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.pending = None


class StepTimes(pl.Callback):
    """Wall time of every training batch (forward, loss, backward, optimiser step): the first one
    carries torch.compile's warm-up, the median of the others is the steady state."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.start = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.times.append(time.perf_counter() - self.start)

    def summary(self, enabled: bool) -> dict[str, Any]:
        return {"enabled": enabled, "first_step_s": self.times[0] if self.times else None,
                "steady_step_s": statistics.median(self.times[1:]) if len(self.times) > 1 else None}


def compile_trunk(model: pl.LightningModule) -> None:
    """compile=true: torch.compile (default mode) the trunk's forward_features, which every pretext's
    trunk pass goes through; in place, so checkpoint keys stay the same. Fails at once, naming the
    key, when inductor cannot build kernels here (no C++ compiler, broken toolchain)."""
    try:
        if not torch.cuda.is_available():
            from torch._inductor.cpp_builder import get_cpp_compiler
            get_cpp_compiler()
        torch.compile(lambda x: x * 2 + 1)(torch.ones(2))
    except Exception as e:
        raise ConfigError(f"compile=true: torch.compile's inductor backend does not work on this machine "
                          f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                          "set compile=false") from e
    model.trunk.forward_features = torch.compile(model.trunk.forward_features)


def resolve_resume(ckpt_path: str | None, out_dir: Path) -> str | None:
    if ckpt_path in (None, "null", ""):
        return None
    if ckpt_path == "auto":
        last = out_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    return str(ckpt_path)


def build_model(cfg: DictConfig, dm: Any, fresh: bool = True) -> pl.LightningModule:
    """Instantiate trunk (initialised), the pretext's parts and the pretext module, with the
    arguments the pretext derives from the training data (its ``data_arguments``, if any).

    fresh=False (resuming) skips data-dependent init: the checkpoint's weights replace it anyway.
    """
    trunk = instantiate(cfg.backbone)
    init = instantiate(cfg.init) if cfg.get("init") else None
    trunk.init_report = (apply_init(trunk, init, dm.first_train_images) if fresh else
                         {"name": getattr(init, "name", "gaussian"), "restored": "weights from the checkpoint"})
    pretext = instantiate(cfg.pretext, _partial_=True, trunk=trunk, optimizer=instantiate(cfg.optimizer),
                          scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None)
    derive = getattr(pretext.func, "data_arguments", None)
    model = pretext(**(derive(dm, cfg.paths.cache_dir, pretext.keywords) if derive else {}))
    if fresh and hasattr(init, "init_head") and hasattr(model, "head"):
        init.init_head(model.head)  # run_init: the authors' fc8 starts at zero (no filler in their prototxt)
    return model


def build_callbacks(cfg: DictConfig, checkpoint: ModelCheckpoint, step_times: StepTimes) -> list[pl.Callback]:
    """The run's own callbacks (checkpoints and their metadata, learning rate, RNG state, step
    times), then the configured ones (config group ``callbacks``)."""
    configured = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    return [checkpoint, CheckpointMetadata(), LearningRateMonitor("step"), RngState(), step_times, *configured]


def build_loggers(cfg: DictConfig) -> list[Any]:
    """The configured loggers; a W&B one gets a run id stable per output folder (see ssl_bench.report.tracking)."""
    out_dir = cfg.paths.output_dir
    return [instantiate(c, **wandb_run_kwargs(c, out_dir)) for c in (cfg.get("logger") or {}).values()
            if c is not None]


class TrainingInterrupted(SystemExit):
    """SIGTERM stopped the training before its end. Exit status 143 (128 + SIGTERM, what a shell
    reports for a killed process): a stopped run wrote no results.json and must not read as a success.
    Raised on every DDP rank; the benchmark stops on it instead of going on with the next stage."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def interrupted_message(cfg: DictConfig, step: int, last: Path) -> str:
    """What a SIGTERM left and the command that resumes (``resolve_resume``)."""
    if not last.is_file():
        how = "no checkpoint was written yet, so the same command starts over"
    elif cfg.ckpt_path == "auto":
        how = f"run the same command again to resume from the last checkpoint {last}"
    else:
        how = f"run it again with ckpt_path={last} to resume from the last checkpoint"
    return f"ssl-bench: pretraining stopped by SIGTERM at step {step}, before the end (no results.json); {how}"


def fit(cfg: DictConfig, trainer: pl.Trainer, model: pl.LightningModule, dm: Any, resume: str | None) -> None:
    """``trainer.fit``; a NaN loss or a SIGTERM stops it with one line naming the checkpoint kept."""
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    try:
        trainer.fit(model, datamodule=dm, ckpt_path=resume)
    except NonFiniteLossError as e:
        kept = f"last good checkpoint: {last}" if last.is_file() else "no checkpoint was written yet"
        raise NonFiniteLossError(f"{e}; training stopped ({kept})") from e
    except SIGTERMException:
        # Lightning ends the fit after the batch in progress and leaves SystemExit(None): exit status 0
        if trainer.is_global_zero:
            print(interrupted_message(cfg, trainer.global_step, last), file=sys.stderr)
        raise TrainingInterrupted() from None


def remove_partial_checkpoints(ckpt_dir: Path) -> None:
    """Delete the temporary files of checkpoint writes that a killed run left (``ssl_bench.io``'s
    ``.<name>.*.tmp``, as large as a checkpoint). Called before training starts, when no write of
    this folder's run is in progress (DDP ranks > 0 get here while rank 0 waits for them)."""
    for tmp in ckpt_dir.glob(".*.ckpt.*.tmp"):
        tmp.unlink(missing_ok=True)


def build_trainer(cfg: DictConfig, step_times: StepTimes, loggers: list[Any]) -> pl.Trainer:
    """The configured trainer with the run's callbacks; checkpoints are written atomically (a full
    disk or a kill never leaves a truncated last.ckpt for ``ckpt_path=auto`` to trip on)."""
    out_dir = Path(cfg.paths.output_dir)
    remove_partial_checkpoints(out_dir / "checkpoints")
    checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="step{step:07d}", save_last=True,
                                 save_top_k=1, monitor=None,
                                 every_n_train_steps=cfg.checkpoint.every_n_train_steps,
                                 save_on_train_epoch_end=True, auto_insert_metric_name=False)
    # the datamodule's loaders shard themselves across DDP ranks (resumable train order, no padded val)
    return instantiate(cfg.trainer, default_root_dir=str(out_dir), precision=run_precision(cfg),
                       use_distributed_sampler=False, plugins=[AtomicCheckpointIO()],
                       callbacks=build_callbacks(cfg, checkpoint, step_times), logger=loggers)


def check_patch_geometry(cfg: DictConfig) -> None:
    """Context prediction's 3 x 3 grid of patches must fit the crop: say so before any data is read,
    naming the keys and the preset that fits the synthetic data."""
    from ssl_bench.pretext.patches import min_image_size
    p = cfg.pretext
    if not str(p.get("_target_", "")).endswith("ContextPredictionPretext"):
        return
    need, crop = min_image_size(p.patch_size, p.gap, p.jitter), cfg.data.crop_size
    if crop < need:
        raise ConfigError(f"pretext=context_prediction: data.crop_size={crop} is smaller than the {need} px that "
                          f"the 3x3 grid of pretext.patch_size={p.patch_size}, pretext.gap={p.gap}, "
                          f"pretext.jitter={p.jitter} needs; on the synthetic data use "
                          f"experiment=demo_context_prediction (patches scaled to 64 px images), otherwise "
                          f"set data.crop_size>={need} (and data.load_size) or shrink the patches")


def per_device_batch(global_batch: int, world: int) -> int:
    """``data.batch_size`` is the global batch: each of the ``world`` processes loads its share."""
    if global_batch % world:
        raise ConfigError(f"data.batch_size={global_batch} is the global batch; it must divide evenly over "
                          f"the {world} processes (trainer.devices x trainer.num_nodes): use a multiple of {world}")
    return global_batch // world


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Run one pretraining job; returns the results.json record."""
    clock = RunClock()
    out_dir = Path(cfg.paths.output_dir)
    check_patch_geometry(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    resume = resolve_resume(cfg.ckpt_path, out_dir)
    model = build_model(cfg, dm, fresh=resume is None)
    if cfg.get("compile"):
        compile_trunk(model)
    step_times = StepTimes()
    loggers = build_loggers(cfg)
    trainer = build_trainer(cfg, step_times, loggers)
    dm.batch_size = per_device_batch(cfg.data.batch_size, trainer.world_size)
    if resume:
        check_state_dict(model, read_checkpoint(resume)["state_dict"], resume)
    # re-seed after the preparation: a cached prior or a skipped init must not shift the data order
    pl.seed_everything(cfg.seed, workers=True)
    fit(cfg, trainer, model, dm, resume)

    samples = sorted(str(p.relative_to(out_dir)) for p in (out_dir / "samples").glob("*.png"))
    final = final_samples(model, dm) if trainer.is_global_zero else None  # one writer under DDP
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("pretrain/")}
    metrics["pretrain/steps"] = trainer.global_step
    metrics["pretrain/images_per_s"] = (trainer.global_step * cfg.data.batch_size) / clock.elapsed()
    meta = model.checkpoint_meta
    record = {
        "kind": "pretrain",
        "method": "/".join(str(p) for p in (meta["pretext"], meta["variant"]) if p),
        "status": "completed",
        "metrics": metrics,
        "dataset": {"name": Path(str(dm.root)).name, "root": str(dm.root), "fingerprint": dm.fingerprint,
                    "num_train": len(dm.train_samples), "num_val": len(dm.val_samples),
                    "skipped_images": model.skips.count,
                    "skipped_by_split": dm.skipped_by_split},
        "checkpoint": str(Path("checkpoints") / "last.ckpt"),
        "trunk": meta,
        "init": model.trunk.init_report,
        "samples": samples + ([str(final.relative_to(out_dir))] if final else []),
        "compile": step_times.summary(bool(cfg.get("compile"))),
    }
    pretext_metrics = getattr(model, "pretext_metrics", None)  # a pretext's own measurements (non-scalar)
    if pretext_metrics:
        record["pretext_metrics"] = pretext_metrics
    record = finish_record(record, clock, cfg, out_dir, write=trainer.is_global_zero)
    finish_run(loggers, record, out_dir / "results.json")
    return record


@torch.no_grad()
def final_samples(model: pl.LightningModule, dm: Any) -> Path | None:
    """The pretext's picture of the first validation images (samples/final.png), if it has one."""
    model.eval()
    for batch in dm.val_dataloader():
        if batch["image"].numel():
            return model.final_samples(batch["image"].to(model.device))
    return None
