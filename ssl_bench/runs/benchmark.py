"""``ssl-bench benchmark``: the whole pipeline for a list of methods, resumable stage by stage.

For each method: pretrain (or build an untrained init), then the configured probes, then (when
configured) the PASCAL VOC tasks; finally the leaderboard of everything under the output folder.
Every stage runs in a folder named after a hash of its composed config and of the stage it reads
from, so re-running the same command skips what already finished (a stage whose results.json says
"completed"), resumes a killed pretraining from its last checkpoint, and reruns a stage whose
config changed in a new folder. A failed stage is recorded (``failed.json`` with the error) and the
pipeline goes on with the other methods; the leaderboard lists what is missing and why.

``logger=wandb`` makes every stage that has a logger a W&B run (named after the stage, in one
group), then logs the leaderboard as one more run (job_type "leaderboard"); the logger choice is
passed to the stages at run time and is not part of the stage hash, so switching it reruns nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ssl_bench.config import compose
from ssl_bench.io import atomic_write_text
from ssl_bench.runs.jobs import fail, root_cause, run_hydra, user_errors

# method -> (kind, overrides). "pretrain" methods train a trunk; "init" methods are untrained rows.
# Presets add their own overrides per method (e.g. the demo's experiment files).
KINDS = ("pretrain", "init")


def stage_key(config: DictConfig | dict, upstream: str = "") -> str:
    """Hash of a composed stage config (output paths and Hydra's own settings left out) and of the
    stage it reads from."""
    cfg = OmegaConf.to_container(config, resolve=False) if isinstance(config, DictConfig) else dict(config)
    for volatile in ("paths", "hydra"):
        cfg.pop(volatile, None)
    blob = json.dumps({"config": cfg, "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]



def completed(stage_dir: Path) -> bool:
    path = stage_dir / "results.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("status") == "completed"
    except (OSError, ValueError):
        return False


class Stage:
    """One planned stage: its Hydra config, overrides, folder, and the stage it reads from."""

    def __init__(self, name: str, config_name: str, overrides: list[str], out_dir: Path,
                 upstream: "Stage | None" = None, also_reads: "Stage | None" = None) -> None:
        self.name, self.config_name, self.overrides, self.upstream = name, config_name, overrides, upstream
        # composing now also checks every override before anything runs
        self.config = compose(config_name, overrides)
        inputs = "+".join(s.key for s in (upstream, also_reads) if s is not None)
        self.key = stage_key(self.config, inputs)
        self.dir = out_dir / f"{name}-{self.key}"

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoints" / "last.ckpt"


def shared_decoded(cfg: DictConfig, config_name: str, overrides: list[str]) -> list[str]:
    """With ``decoded_cache_dir`` set, the stage reads its image data set from one decoded uint8 copy
    per (data set, load size) under that folder, built by the first stage that needs it and read by
    every later one (pretraining epochs, Krähenbühl statistics, probe features, colorization metrics)
    instead of decoding the JPEGs again. Overrides to add to the stage (none for VOC stages)."""
    root = cfg.get("decoded_cache_dir")
    if not root:
        return list(overrides)
    data = compose(config_name, overrides).get("data")
    if data is None or not str(data.get("_target_", "")).endswith("ImageDataModule"):
        return list(overrides)
    # keyed by the data config as written (root, synthetic spec, load size), not by what is read out
    # of the copy (the crop is taken at read time, so context prediction's 64 px crops share it with
    # the others' 56 px); resolving data.root would need Hydra's run-time values
    spec = {k: v for k, v in OmegaConf.to_container(data, resolve=False).items()
            if k not in ("batch_size", "num_workers", "decoded_cache", "decode", "crop_size")}
    tag = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return [*overrides, f"data.decoded_cache={Path(root) / f'data-{tag}'}"]


def plan(cfg: DictConfig) -> list[Stage]:
    """Every stage of the benchmark, in run order; raises on any bad method or override."""
    out = Path(cfg.out_dir)
    stages: list[Stage] = []
    pretrained: dict[str, Stage] = {}
    for method in cfg.methods:
        preset = cfg.method_presets[method]
        pre: Stage | None = None
        if preset.kind == "pretrain":
            pre = Stage(f"{method}/pretrain", "pretrain",
                        shared_decoded(cfg, "pretrain", [*cfg.pretrain_overrides, *preset.overrides]), out)
            stages.append(pre)
            pretrained[method] = pre
            source = [f"checkpoint={pre.checkpoint}"]
        else:
            source = list(preset.overrides)
        for probe in cfg.probes:
            stages.append(Stage(f"{method}/probe_{probe}", "probe_run",
                                shared_decoded(cfg, "probe_run", [*source, f"probe={probe}", *cfg.probe_overrides]),
                                out, pre))
        for task in cfg.get("voc_tasks") or []:
            if task not in cfg.voc_task_presets:
                raise ValueError(f"benchmark.voc_tasks: unknown task {task!r}; valid: {sorted(cfg.voc_task_presets)}")
            stages.append(Stage(f"{method}/{task}", "finetune",
                                [*source, *cfg.voc_task_presets[task], *cfg.finetune_overrides], out, pre))
    if cfg.get("colorization_eval"):
        stages += colorization_stages(cfg, pretrained, out)
    return stages


def colorization_stages(cfg: DictConfig, pretrained: dict[str, Stage], out: Path) -> list[Stage]:
    """AuC and classifier top-1 of every colorization trunk; the classifier is the benchmark's own
    supervised trunk when the method list has one (trained on the same data's colour images)."""
    classifier = next((st for st in pretrained.values()
                       if st.config.pretext._target_.endswith("SupervisedPretext")), None)
    extra = [f"classifier={classifier.checkpoint}"] if classifier else []
    return [Stage(f"{method}/colorization_eval", "colorization_eval",
                  shared_decoded(cfg, "colorization_eval",
                                 [f"checkpoint={pre.checkpoint}", *extra, *cfg.colorization_eval_overrides]),
                  out, pre, classifier)
            for method, pre in pretrained.items() if pre.config.pretext._target_.endswith("ColorizationPretext")]


def _wandb(cfg: DictConfig) -> DictConfig | None:
    """The benchmark's W&B logger settings (``logger=wandb``), or None."""
    logger = cfg.get("logger") or {}
    return logger.get("wandb") if "wandb" in logger else None


def wandb_group(cfg: DictConfig) -> str:
    return _wandb(cfg).get("group") or f"benchmark-{cfg.get('preset_name') or Path(cfg.out_dir).name}"


def log_overrides(cfg: DictConfig, stage: Stage) -> list[str]:
    """Run-time logger overrides of a stage (not hashed): with ``logger=wandb`` the stage logs to
    W&B too, with the benchmark's ``logger.wandb.*``, one group and the stage's name as run name.
    Stages without a logger (colorization_eval) get none."""
    if _wandb(cfg) is None or "logger" not in stage.config:
        return []
    from ssl_bench.report.tracking import stage_wandb_overrides
    return stage_wandb_overrides(OmegaConf.to_container(_wandb(cfg), resolve=False),
                                 group=wandb_group(cfg), name=stage.name)


def leaderboard_args(cfg: DictConfig, out: Path) -> list[str]:
    """``ssl-bench leaderboard`` arguments for the benchmark's folder (plus W&B with logger=wandb)."""
    if _wandb(cfg) is None:
        return [str(out), "--out", str(out)]
    from ssl_bench.report.tracking import leaderboard_wandb_args
    return [str(out), "--out", str(out), *leaderboard_wandb_args(_wandb(cfg), group=wandb_group(cfg))]


def run_stages(stages: list[Stage], runner: Callable[[str, list[str]], None],
               extra: Callable[[Stage], list[str]] = lambda stage: []) -> tuple[dict, dict]:
    """Run each stage unless its results exist; a failure is recorded and its dependants skipped.
    ``extra(stage)``: run-time overrides that are not part of the stage's hash (its loggers)."""
    times: dict[str, float] = {}
    failures: dict[str, str] = {}
    for stage in stages:
        if stage.upstream is not None and stage.upstream.name in failures:
            failures[stage.name] = f"not run: {stage.upstream.name} failed"
            continue
        if completed(stage.dir):
            print(f"ssl-bench: benchmark: {stage.name} done before ({stage.dir}); skipped")
            continue
        t0 = time.perf_counter()
        try:
            runner(stage.config_name, [*stage.overrides, *extra(stage), f"hydra.run.dir={stage.dir}"])
        except (Exception, SystemExit) as e:  # one failed stage must not stop the others
            failures[stage.name] = f"{type(e).__name__}: {e}"
            stage.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(stage.dir / "failed.json", json.dumps(
                {"stage": stage.name, "reason": failures[stage.name], "traceback": traceback.format_exc()},
                indent=2))
            print(f"ssl-bench: benchmark: {stage.name} failed ({failures[stage.name]}); going on")
            continue
        times[stage.name] = time.perf_counter() - t0
    return times, failures


def validate(cfg: DictConfig) -> None:
    """Refuse unknown methods or stages before anything starts."""
    known = dict(cfg.method_presets)
    bad = [m for m in cfg.methods if m not in known]
    if bad:
        raise ValueError(f"benchmark.methods: unknown method(s) {bad}; valid: {sorted(known)}")
    for m in cfg.methods:
        kind = known[m].get("kind")
        if kind not in KINDS:
            raise ValueError(f"benchmark method_presets.{m}.kind: expected one of {KINDS}, got {kind!r}")
    if _wandb(cfg) is not None and not _wandb(cfg).get("project"):
        raise ValueError("benchmark: logger=wandb needs logger.wandb.project")
    if not cfg.probes and not cfg.get("voc_tasks"):
        raise ValueError("benchmark: nothing to evaluate (probes and voc_tasks are both empty)")


def run_benchmark(cfg: DictConfig, runner: Callable[[str, list[str]], None]) -> dict[str, Any]:
    """The pipeline for ``cfg.methods``; returns {"out_dir", "times", "failures"}."""
    validate(cfg)
    stages = plan(cfg)
    out = Path(cfg.out_dir)
    times, failures = run_stages(stages, runner, lambda stage: log_overrides(cfg, stage))
    from ssl_bench.runs.leaderboard import main as leaderboard_main
    leaderboard_main(leaderboard_args(cfg, out))
    summary = {"out_dir": str(out), "times": times, "failures": failures}
    atomic_write_text(out / "benchmark_summary.json", json.dumps(summary, indent=2))
    print("ssl-bench: benchmark stages (wall s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    if failures:
        print("ssl-bench: benchmark: failed stages: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    print(f"ssl-bench: benchmark finished in {out}")
    return summary


def _stage(name: str, args: list[str]) -> None:
    """Run one stage as its own Hydra job; a failing stage raises its own error (Hydra reports only
    an exit code)."""
    errors: list[BaseException] = []
    try:
        run_hydra(name, args, f"ssl-bench {name}", errors)
    except SystemExit as e:
        if e.code:
            raise (errors[-1] if errors else RuntimeError(f"exit code {e.code}")) from None


def main(argv: Sequence[str]) -> int:
    """``ssl-bench benchmark|demo [overrides]``: compose conf/benchmark.yaml, then run each stage,
    skipping stages that already finished. Exit 1 when a stage failed."""
    from hydra.errors import HydraException
    try:
        summary = run_benchmark(compose("benchmark", argv), _stage)
    except (HydraException, *user_errors()) as e:
        if os.environ.get("SSL_BENCH_DEBUG"):
            raise
        fail(root_cause(e))
    return 1 if summary["failures"] else 0
