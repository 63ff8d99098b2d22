"""``ssl-bench benchmark``: the whole pipeline for a list of methods, resumable stage by stage.

For each method: pretrain (or build an untrained init), then the configured probes, then (when
configured) the PASCAL VOC tasks; finally the leaderboard of everything under the output folder.
Every stage runs in a folder named after a hash of its composed config and of the stage it reads
from, so re-running the same command skips what already finished (a stage whose results.json says
"completed"), resumes a killed pretraining from its last checkpoint, and reruns a stage whose
config changed in a new folder. A failed stage is recorded (``failed.json`` with the error) and the
pipeline goes on with the other methods; the leaderboard lists what is missing and why.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ssl_bench.results import atomic_write_text

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


def compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    from hydra import compose as hydra_compose, initialize_config_dir

    from ssl_bench.cli import CONF_DIR
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))


def completed(stage_dir: Path) -> bool:
    path = stage_dir / "results.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("status") == "completed"
    except (OSError, ValueError):
        return False


class Pipeline:
    """Runs stages through a ``runner(config_name, overrides)`` (the CLI's Hydra launcher)."""

    def __init__(self, out_dir: Path, runner: Callable[[str, list[str]], None]) -> None:
        self.out_dir, self.runner = out_dir, runner
        self.times: dict[str, float] = {}
        self.failures: dict[str, str] = {}

    def stage(self, name: str, config_name: str, overrides: list[str], upstream: str = "") -> tuple[Path, str] | None:
        """Run one stage unless its results exist; None when it (or its upstream) failed."""
        key = stage_key(compose(config_name, overrides), upstream)
        stage_dir = self.out_dir / f"{name}-{key}"
        if completed(stage_dir):
            print(f"ssl-bench: benchmark: {name} done before ({stage_dir}); skipped")
            return stage_dir, key
        t0 = time.perf_counter()
        try:
            self.runner(config_name, [*overrides, f"hydra.run.dir={stage_dir}"])
        except (Exception, SystemExit) as e:  # one failed stage must not stop the others
            reason = f"{type(e).__name__}: {e}"
            self.failures[name] = reason
            stage_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(stage_dir / "failed.json", json.dumps(
                {"stage": name, "reason": reason, "traceback": traceback.format_exc()}, indent=2))
            print(f"ssl-bench: benchmark: {name} failed ({reason}); going on")
            return None
        self.times[name] = time.perf_counter() - t0
        return stage_dir, key


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
    if not cfg.probes and not cfg.get("voc_tasks"):
        raise ValueError("benchmark: nothing to evaluate (probes and voc_tasks are both empty)")


def run_benchmark(cfg: DictConfig, runner: Callable[[str, list[str]], None]) -> dict[str, Any]:
    """The pipeline for ``cfg.methods``; returns {"out_dir", "times", "failures"}."""
    validate(cfg)
    out = Path(cfg.out_dir)
    pipe = Pipeline(out, runner)
    for method in cfg.methods:
        preset = cfg.method_presets[method]
        source: list[str]
        upstream = ""
        if preset.kind == "pretrain":
            done = pipe.stage(f"{method}/pretrain", "pretrain", [*cfg.pretrain_overrides, *preset.overrides])
            if done is None:
                continue
            source, upstream = [f"checkpoint={done[0] / 'checkpoints' / 'last.ckpt'}"], done[1]
        else:
            source = list(preset.overrides)
        for probe in cfg.probes:
            pipe.stage(f"{method}/probe_{probe}", "probe_run",
                       [*source, f"probe={probe}", *cfg.probe_overrides], upstream)
        for task in cfg.get("voc_tasks") or []:
            task_args = list(cfg.voc_task_presets[task])
            init = [a for a in source if a.startswith(("init=", "backbone."))]
            pipe.stage(f"{method}/{task}", "finetune",
                       [*(source if not init else init), *task_args, *cfg.finetune_overrides], upstream)
    from ssl_bench.evaluation.leaderboard import leaderboard_main
    leaderboard_main([str(out), "--out", str(out)])
    summary = {"out_dir": str(out), "times": pipe.times, "failures": pipe.failures}
    atomic_write_text(out / "benchmark_summary.json", json.dumps(summary, indent=2))
    print("ssl-bench: benchmark stages (wall s): " + ", ".join(f"{k} {v:.0f}" for k, v in pipe.times.items()))
    if pipe.failures:
        print("ssl-bench: benchmark: failed stages: " + "; ".join(f"{k}: {v}" for k, v in pipe.failures.items()))
    print(f"ssl-bench: benchmark finished in {out}")
    return summary
