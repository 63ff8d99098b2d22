"""Weights & Biases extras on top of Lightning's WandbLogger: a stable run id, and the end of a run.

- :func:`wandb_run_kwargs`: a WandbLogger config without an ``id`` gets one derived from the run's
  output folder (plus ``resume: allow``), so re-running the same command (same ``hydra.run.dir``)
  continues the same W&B run instead of starting a new one;
- :func:`finish_run`: the resolved config, a per-layer table (probe runs), the final namespaced
  metrics (run summary) and ``results.json`` as an artifact, then ``finish()``;
- :func:`log_leaderboard`: the leaderboard rows as a W&B table, when a W&B run is active.

Offline runs (``WANDB_MODE=offline`` or ``logger.wandb.offline=true``) write the same things under
``<output_dir>/wandb/offline-run-*``; ``wandb sync`` uploads them later.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence


def is_wandb_config(c: Any) -> bool:
    return str((c or {}).get("_target_", "")).endswith("WandbLogger")


def wandb_run_kwargs(c: Mapping[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Extra instantiate() kwargs for a WandbLogger config: an id stable per output folder."""
    if not is_wandb_config(c) or c.get("id") or c.get("version"):
        return {}
    run_id = hashlib.sha1(str(Path(out_dir).resolve()).encode()).hexdigest()[:16]
    return {"id": run_id, "resume": c.get("resume") or "allow"}


def wandb_experiments(loggers: Iterable[Any]) -> list[Any]:
    """The W&B run objects among Lightning loggers (duck-typed: ``.experiment`` with log and finish)."""
    runs = []
    for logger in loggers or []:
        exp = getattr(logger, "experiment", None)
        if type(exp).__name__ == "DummyExperiment":  # a non-zero rank: nothing to log
            continue
        if exp is not None and hasattr(exp, "log") and hasattr(exp, "finish"):
            runs.append(exp)
    return runs


def layer_rows(metrics: Mapping[str, Any]) -> list[list[Any]]:
    """[layer, top1, top5] per probed layer, from ``probe/<layer>/top1|top5`` metrics."""
    layers = [k.split("/")[1] for k in metrics if k.startswith("probe/") and k.endswith("/top1")
              and k.count("/") == 2 and k.split("/")[1] != "best"]
    return [[l, metrics.get(f"probe/{l}/top1"), metrics.get(f"probe/{l}/top5")] for l in layers]


def finish_run(loggers: Iterable[Any], record: Mapping[str, Any], results_path: str | Path | None) -> None:
    """Log the end of a run to every W&B logger among ``loggers`` and finish it; others are left alone."""
    for run in wandb_experiments(loggers):
        import wandb
        if record.get("config"):
            run.config.update(record["config"], allow_val_change=True)
        metrics = {k: v for k, v in (record.get("metrics") or {}).items() if isinstance(v, (int, float))}
        rows = layer_rows(metrics) if record.get("kind") == "probe" else []
        final: dict[str, Any] = dict(metrics)  # one history row with the final numbers, also the summary
        if rows:
            final["probe/layers"] = wandb.Table(columns=["layer", "top1", "top5"], data=rows)
        if final:
            run.log(final)
        if metrics:
            run.summary.update(metrics)
        if results_path is not None and Path(results_path).is_file():
            art = wandb.Artifact(name=f"results-{run.id}", type="results")
            art.add_file(str(results_path), name="results.json")
            run.log_artifact(art)
        run.finish()


def log_leaderboard(columns: Sequence[str], rows: Sequence[Sequence[Any]], key: str = "leaderboard") -> bool:
    """The leaderboard rows as a W&B table in the active run, if there is one; True when logged."""
    try:
        import wandb
    except ImportError:  # pragma: no cover
        return False
    if wandb.run is None:
        return False
    wandb.run.log({key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})
    return True


__all__ = ["finish_run", "is_wandb_config", "layer_rows", "log_leaderboard", "wandb_experiments",
           "wandb_run_kwargs"]
