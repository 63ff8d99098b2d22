"""``ssl-bench benchmark``: the whole pipeline for a list of methods, resumable stage by stage.

For each method: pretrain (or build an untrained init), then the configured probes, then (when
configured) the PASCAL VOC tasks; finally the leaderboard of everything under the output folder.
Every stage runs in a folder named after a hash of its composed config and of the stage it reads
from, so re-running the same command skips what already finished (a stage whose results.json says
"completed"), resumes a killed pretraining from its last checkpoint, and reruns a stage whose
config changed in a new folder. A failed stage is recorded (``failed.json`` with the error) and the
pipeline goes on with the other methods; the leaderboard lists what is missing and why. A SIGTERM
during a pretraining stops the whole benchmark (exit 143); the same command resumes it.

One benchmark at a time per output folder (a lock file in it; a second run is refused). Its
``benchmark_summary.json`` gives the wall time of every finished stage, including the stages a
re-run skipped (the time measured when they ran), and which stages ran this time.

``logger=wandb`` makes every stage that has a logger a W&B run (named after the stage, in one
group), then logs the leaderboard as one more run (job_type "leaderboard"); the logger choice is
passed to the stages at run time and is not part of the stage hash, so switching it reruns nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ssl_bench.config import compose
from ssl_bench.errors import BusyError, ConfigError
from ssl_bench.io import atomic_write_text
from ssl_bench.runs.jobs import composition_error, fail, root_cause, run_hydra, user_errors

# method -> (kind, overrides). "pretrain" methods train a trunk; "init" methods are untrained rows.
# Presets add their own overrides per method (e.g. the demo's experiment files).
KINDS = ("pretrain", "init")
SUMMARY_NAME = "benchmark_summary.json"
LOCK_NAME = ".benchmark.lock"


def stage_key(config: DictConfig | dict, upstream: str = "") -> str:
    """Hash of a composed stage config (output paths and Hydra's own settings left out) and of the
    stage it reads from."""
    cfg = OmegaConf.to_container(config, resolve=False) if isinstance(config, DictConfig) else dict(config)
    for volatile in ("paths", "hydra"):
        cfg.pop(volatile, None)
    blob = json.dumps({"config": cfg, "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]



def finished(stage_dir: Path) -> dict | None:
    """The stage's results record when it says "completed", else None."""
    path = stage_dir / "results.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("status") == "completed" else None


class OutputFolderBusy(BusyError):
    """Another benchmark holds the output folder's lock."""


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the benchmark folder while the stages run: two runs in one folder
    would train the same stage into the same files. The kernel drops the lock when the process ends,
    crash or kill included, so a stale lock file never blocks the next run."""
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputFolderBusy(f"benchmark: output folder {out} is in use by another ssl-bench benchmark "
                                   f"(lock {lock}); wait for it to end or set out_dir to another folder") from None
        yield
    finally:
        os.close(fd)


class Stage:
    """One planned stage: its Hydra config, overrides, folder, and the stage it reads from."""

    def __init__(self, name: str, config_name: str, overrides: list[str], out_dir: Path,
                 upstream: "Stage | None" = None, also_reads: "Stage | None" = None) -> None:
        self.name, self.config_name, self.overrides, self.upstream = name, config_name, overrides, upstream
        # composing now also checks every override before anything runs
        self.config = compose(config_name, overrides)
        inputs = "+".join(s.key for s in (upstream, also_reads) if s is not None)
        self.key = stage_key(self.config, inputs)
        self.dir = out_dir / self.rel

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoints" / "last.ckpt"

    @property
    def rel(self) -> str:
        """The stage folder under the benchmark folder (the summary's key for its time)."""
        return f"{self.name}-{self.key}"


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
                raise ConfigError(f"benchmark.voc_tasks: unknown task {task!r}; valid: {sorted(cfg.voc_task_presets)}")
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


def log_finished_stage(cfg: DictConfig, stage: Stage) -> None:
    """With ``logger=wandb``, a stage that finished before still gets its W&B run (one per stage, as
    when it runs): its results.json is logged to the run id its own logger uses."""
    if _wandb(cfg) is None or "logger" not in stage.config:
        return
    from ssl_bench.report.tracking import results_run
    settings = {k: _wandb(cfg).get(k) for k in ("project", "entity", "tags", "offline")}
    results_run(stage.dir / "results.json", settings, group=wandb_group(cfg), name=stage.name)


def leaderboard_args(cfg: DictConfig, out: Path) -> list[str]:
    """``ssl-bench leaderboard`` arguments for the benchmark's folder (plus W&B with logger=wandb)."""
    if _wandb(cfg) is None:
        return [str(out), "--out", str(out)]
    from ssl_bench.report.tracking import leaderboard_wandb_args
    return [str(out), "--out", str(out), *leaderboard_wandb_args(_wandb(cfg), group=wandb_group(cfg))]


def earlier_times(out: Path) -> dict[str, float]:
    """Stage times of the previous summary, by stage folder (a changed config is another folder)."""
    try:
        prev = json.loads((out / SUMMARY_NAME).read_text())
        return {prev["stage_dirs"][k]: float(v) for k, v in prev["times"].items() if k in prev["stage_dirs"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # none, or unreadable: it is about to be rewritten, times fall back to results.json


def skipped_time(stage: Stage, record: dict, earlier: dict[str, float]) -> float | None:
    """A finished stage's time: the one the benchmark measured when it ran, else its own wall time."""
    if stage.rel in earlier:
        return earlier[stage.rel]
    wall = record.get("wall_time_s")
    return float(wall) if isinstance(wall, (int, float)) else None


def run_one(stage: Stage, runner: Callable[[str, list[str]], None], extra: list[str]) -> str | None:
    """Run one stage; returns None, or the reason it failed (also written to its failed.json)."""
    try:
        runner(stage.config_name, [*stage.overrides, *extra, f"hydra.run.dir={stage.dir}"])
    except (Exception, SystemExit) as e:  # one failed stage must not stop the others
        from ssl_bench.runs.pretrain import TrainingInterrupted
        if isinstance(e, TrainingInterrupted):  # SIGTERM: stop here, the same command resumes
            print(f"ssl-bench: benchmark: stopped in {stage.name}; run the same command again to resume")
            raise
        reason = f"{type(e).__name__}: {e}"
        stage.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stage.dir / "failed.json", json.dumps(
            {"stage": stage.name, "reason": reason, "traceback": traceback.format_exc()}, indent=2))
        return reason
    return None


def run_stages(stages: list[Stage], runner: Callable[[str, list[str]], None],
               extra: Callable[[Stage], list[str]] = lambda stage: [],
               earlier: dict[str, float] | None = None,
               on_skip: Callable[[Stage], None] = lambda stage: None) -> dict[str, Any]:
    """Run each stage unless its results exist; a failure is recorded and its dependants skipped.
    ``extra(stage)``: run-time overrides that are not part of the stage's hash (its loggers).
    ``earlier``: stage times of the previous run by stage folder, kept for the stages skipped now.
    ``on_skip(stage)``: called for each stage that finished before (logs its results to W&B).
    Returns {"times", "ran", "skipped", "failures"}."""
    times: dict[str, float] = {}
    ran: list[str] = []
    skipped: list[str] = []
    failures: dict[str, str] = {}
    for stage in stages:
        if stage.upstream is not None and stage.upstream.name in failures:
            failures[stage.name] = f"not run: {stage.upstream.name} failed"
            continue
        record = finished(stage.dir)
        if record is not None:
            print(f"ssl-bench: benchmark: {stage.name} done before ({stage.dir}); skipped")
            skipped.append(stage.name)
            on_skip(stage)
            t = skipped_time(stage, record, earlier or {})
            if t is not None:
                times[stage.name] = t
            continue
        t0 = time.perf_counter()
        reason = run_one(stage, runner, extra(stage))
        if reason is not None:
            failures[stage.name] = reason
            print(f"ssl-bench: benchmark: {stage.name} failed ({reason}); going on")
            continue
        times[stage.name] = time.perf_counter() - t0
        ran.append(stage.name)
    return {"times": times, "ran": ran, "skipped": skipped, "failures": failures}


def validate(cfg: DictConfig) -> None:
    """Refuse unknown methods or stages before anything starts."""
    known = dict(cfg.method_presets)
    bad = [m for m in cfg.methods if m not in known]
    if bad:
        raise ConfigError(f"benchmark.methods: unknown method(s) {bad}; valid: {sorted(known)}")
    for m in cfg.methods:
        kind = known[m].get("kind")
        if kind not in KINDS:
            raise ConfigError(f"benchmark method_presets.{m}.kind: expected one of {KINDS}, got {kind!r}")
    if _wandb(cfg) is not None and not _wandb(cfg).get("project"):
        raise ConfigError("benchmark: logger=wandb needs logger.wandb.project")
    if not cfg.probes and not cfg.get("voc_tasks"):
        raise ConfigError("benchmark: nothing to evaluate (probes and voc_tasks are both empty)")


def run_benchmark(cfg: DictConfig, runner: Callable[[str, list[str]], None]) -> dict[str, Any]:
    """The pipeline for ``cfg.methods``; returns the summary it writes to benchmark_summary.json:
    {"out_dir", "times" (every stage that finished, now or before), "ran", "skipped", "stage_dirs",
    "failures"}."""
    validate(cfg)
    stages = plan(cfg)
    out = Path(cfg.out_dir)
    with exclusive(out):
        result = run_stages(stages, runner, lambda stage: log_overrides(cfg, stage), earlier_times(out),
                            lambda stage: log_finished_stage(cfg, stage))
        from ssl_bench.runs.leaderboard import main as leaderboard_main
        leaderboard_main(leaderboard_args(cfg, out))
        summary = {"out_dir": str(out), **result,
                   "stage_dirs": {st.name: st.rel for st in stages if st.name in result["times"]}}
        atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=2))
    earlier = set(result["skipped"])
    print("ssl-bench: benchmark stages (wall s): " + ", ".join(
        f"{k} {v:.0f}" + (" (earlier run)" if k in earlier else "") for k, v in result["times"].items()))
    if result["failures"]:
        print("ssl-bench: benchmark: failed stages: " + "; ".join(f"{k}: {v}" for k, v in result["failures"].items()))
    print(f"ssl-bench: benchmark finished in {out}")
    return summary


def _stage(name: str, args: list[str]) -> None:
    """Run one stage as its own Hydra job; a failing stage raises its own error (Hydra reports only
    an exit code)."""
    errors: list[BaseException] = []
    try:
        run_hydra(name, args, f"ssl-bench {name}", errors)
    except SystemExit as e:
        from ssl_bench.runs.pretrain import TrainingInterrupted
        if isinstance(e, TrainingInterrupted):
            raise
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
        cause = root_cause(e)
        fail(composition_error(cause) if isinstance(cause, HydraException) else cause)
    return 1 if summary["failures"] else 0
