"""Weights & Biases extras on top of Lightning's WandbLogger: a stable run id, and the end of a run.

- :func:`wandb_run_kwargs`: a WandbLogger config without an ``id`` gets one derived from the run's
  output folder (plus ``resume: allow``), so re-running the same command (same ``hydra.run.dir``)
  continues the same W&B run instead of starting a new one;
- :func:`finish_run`: the resolved config, a per-layer table (probe runs), the final namespaced
  metrics (run summary) and ``results.json`` as an artifact, then ``finish()``;
- :func:`log_leaderboard`: the leaderboard rows as a W&B table, when a W&B run is active;
- :func:`leaderboard_run`: a W&B run of its own (job_type "leaderboard") with the leaderboard's
  tables, plot and files, for ``ssl-bench leaderboard --wandb-project`` and ``ssl-bench benchmark
  logger=wandb``;
- :func:`offline_unless_reachable`: with ``WANDB_MODE`` unset, a TCP connect to the W&B host
  (``WANDB_BASE_URL``, default api.wandb.ai:443) decides: unreachable within
  :data:`PROBE_TIMEOUT_S` -> ``WANDB_MODE=offline`` for the rest of the process, said in one line.
  :func:`wandb_run_kwargs` calls it, so every WandbLogger the suite builds gets it.

Offline runs (``WANDB_MODE=offline``, ``logger.wandb.offline=true``, or no network) write the same
things under ``<output_dir>/wandb/offline-run-*``; ``wandb sync`` uploads them later.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from ssl_bench.config import CONF_DIR
from ssl_bench.errors import ConfigError

DEFAULT_BASE_URL = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 2.0


def is_wandb_config(c: Any) -> bool:
    return str((c or {}).get("_target_", "")).endswith("WandbLogger")


def stable_run_id(out_dir: str | Path, kind: str = "") -> str:
    """A W&B run id derived from a folder (and a kind, so that a folder's leaderboard run is not the
    run of the same folder's own training): the same folder, the same run."""
    key = str(Path(out_dir).resolve()) + (f"#{kind}" if kind else "")
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def wandb_run_kwargs(c: Mapping[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Extra instantiate() kwargs for a WandbLogger config: an id stable per output folder.

    Also the place where a W&B run is about to start, so it runs :func:`offline_unless_reachable`
    (not for a config that is offline already)."""
    if not is_wandb_config(c):
        return {}
    if not c.get("offline") and c.get("mode") not in ("offline", "disabled"):
        offline_unless_reachable(Path(c.get("save_dir") or out_dir) / "wandb")
    if c.get("id") or c.get("version"):
        return {}
    return {"id": stable_run_id(out_dir), "resume": c.get("resume") or "allow"}


def wandb_host() -> tuple[str, int]:
    """(host, port) of the configured W&B server: ``WANDB_BASE_URL``, else api.wandb.ai:443."""
    url = urlsplit(os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL)
    if not url.hostname:  # "host:port" without a scheme
        url = urlsplit(f"https://{url.geturl()}")
    try:
        port = url.port
    except ValueError:
        port = None
    return url.hostname or "api.wandb.ai", port or (80 if url.scheme == "http" else 443)


def tcp_reachable(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to host:port opens within ``timeout`` seconds, DNS included (the
    lookup runs in a daemon thread: without network a resolver can hang far longer than that)."""
    import threading
    import time
    start, found = time.monotonic(), []

    def lookup() -> None:
        try:
            found.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError:
            pass

    resolver = threading.Thread(target=lookup, daemon=True)
    resolver.start()
    resolver.join(timeout)
    for family, kind, proto, _, address in list(found):
        left = timeout - (time.monotonic() - start)
        if left <= 0:
            break
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(left)
                sock.connect(address)
                return True
        except OSError:
            continue
    return False


def offline_unless_reachable(where: str | Path | None = None, probe=None) -> bool:
    """With ``WANDB_MODE`` unset: probe the W&B host; unreachable -> set ``WANDB_MODE=offline`` for
    this process (and its children) and print one line. Returns True when it switched to offline.

    ``probe(host, port, timeout) -> bool`` defaults to :func:`tcp_reachable`, looked up when called,
    so tests can monkeypatch ``ssl_bench.report.tracking.tcp_reachable``. A set ``WANDB_MODE`` (online,
    offline, disabled) is left alone and nothing is probed; once switched, later runs in the same
    process see ``WANDB_MODE=offline`` and are not probed again.
    """
    if os.environ.get("WANDB_MODE"):
        return False
    host, port = wandb_host()
    if (probe or tcp_reachable)(host, port, PROBE_TIMEOUT_S):
        return False
    os.environ["WANDB_MODE"] = "offline"
    runs = f"{where}/offline-run-*" if where else "<save_dir>/wandb/offline-run-*"
    print(f"ssl-bench: W&B host {host}:{port} not reachable within {PROBE_TIMEOUT_S:g} s: logging offline "
          f"(WANDB_MODE=offline); upload later with `wandb sync {runs}`", flush=True)
    return True


def wandb_experiments(loggers: Iterable[Any]) -> list[Any]:
    """The W&B run objects among Lightning loggers (WandbLogger, or anything named like it)."""
    runs = []
    for logger in loggers or []:
        if "Wandb" not in type(logger).__name__:
            continue
        exp = getattr(logger, "experiment", None)
        if "DummyExperiment" in type(exp).__name__:  # a non-zero DDP rank: nothing to log
            continue
        if exp is not None and hasattr(exp, "log") and hasattr(exp, "finish"):
            runs.append(exp)
    return runs


def layer_rows(metrics: Mapping[str, Any]) -> list[list[Any]]:
    """[layer, top1, top5] per probed layer, from ``probe/<layer>/top1|top5`` metrics."""
    layers = [k.split("/")[1] for k in metrics if k.startswith("probe/") and k.endswith("/top1")
              and k.count("/") == 2 and k.split("/")[1] != "best"]
    return [[layer, metrics.get(f"probe/{layer}/top1"), metrics.get(f"probe/{layer}/top5")] for layer in layers]


def finish_run(loggers: Iterable[Any], record: Mapping[str, Any], results_path: str | Path | None) -> None:
    """Log the end of a run to every W&B logger among ``loggers`` and finish it; others are left alone."""
    for run in wandb_experiments(loggers):
        finish_experiment(run, record, results_path)


def results_run(results_path: str | Path, settings: Mapping[str, Any], *, group: str, name: str) -> str:
    """Log a finished stage's ``results.json`` to the stage's W&B run and finish it; returns the run id.

    For a benchmark re-run with ``logger=wandb`` whose stages finished before: the run id is the one
    the stage's own WandbLogger uses (derived from its output folder, ``resume="allow"``), so a stage
    that logged to W&B when it ran is continued, and one that ran without W&B gets its run now.
    """
    import json

    import wandb
    results_path = Path(results_path)
    out_dir = results_path.parent
    record = json.loads(results_path.read_text())
    mode = "offline" if settings.get("offline") else None
    if mode is None:
        offline_unless_reachable(out_dir / "wandb")
    run = wandb.init(project=settings.get("project"), entity=settings.get("entity") or None, group=group,
                     tags=list(settings.get("tags") or []) or None, name=name, id=stable_run_id(out_dir),
                     resume="allow", dir=str(out_dir), mode=mode, reinit="create_new")
    finish_experiment(run, record, results_path)
    return run.id


def finish_experiment(run: Any, record: Mapping[str, Any], results_path: str | Path | None) -> None:
    """The end of one W&B run: config, final metrics (history row and summary), the per-layer table
    of a probe, ``results.json`` as an artifact, then ``finish()``."""
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


def leaderboard_run(out_dir: str | Path, tables: Mapping[str, tuple[Sequence[str], Sequence[Sequence[Any]]]],
                    *, project: str, entity: str | None = None, group: str | None = None,
                    tags: Sequence[str] = (), mode: str | None = None, image: str | Path | None = None,
                    files: Sequence[str | Path] = (), config: Mapping[str, Any] | None = None) -> str:
    """One W&B run (job_type "leaderboard") with ``tables`` ({key: (columns, rows)}) as W&B tables,
    ``image`` (the layer plot) and ``files`` (leaderboard.md / .csv ...) as an artifact; returns its id.

    The run id comes from ``out_dir``, with ``resume="allow"``: logging the same folder's leaderboard
    again continues the same run. Its files go under ``<out_dir>/wandb``. ``mode`` None: WANDB_MODE,
    else online unless the host is unreachable (:func:`offline_unless_reachable`).
    """
    import wandb
    out_dir = Path(out_dir)
    if mode is None:
        offline_unless_reachable(out_dir / "wandb")
    run = wandb.init(project=project, entity=entity or None, group=group or None, tags=list(tags) or None,
                     job_type="leaderboard", name=f"leaderboard-{out_dir.resolve().name}",
                     id=stable_run_id(out_dir, "leaderboard"), resume="allow", dir=str(out_dir), mode=mode,
                     config=dict(config or {}), reinit="create_new")
    try:
        logged: dict[str, Any] = {key: wandb.Table(columns=list(cols), data=[list(r) for r in rows])
                                  for key, (cols, rows) in tables.items()}
        if image is not None and Path(image).is_file():
            logged["leaderboard/layers"] = wandb.Image(str(image))
        run.log(logged)
        present = [Path(f) for f in files if Path(f).is_file()]
        if present:
            art = wandb.Artifact(name=f"leaderboard-{run.id}", type="leaderboard")
            for f in present:
                art.add_file(str(f), name=f.name)
            run.log_artifact(art)
        return run.id
    finally:
        run.finish()


def hydra_override_value(v: Any) -> str:
    """A value in Hydra's override syntax: null, true/false, a number, a quoted string, or a list."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(hydra_override_value(x) for x in v) + "]"
    text = str(v)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise ConfigError(f"logger.wandb: {text!r} has both kinds of quotes")


# set per run (name, id) or by the stage's own config (save_dir): never passed down by the benchmark
_STAGE_OWN = ("_target_", "save_dir", "name", "id", "version", "resume")
LOGGER_YAML = CONF_DIR / "logger" / "wandb.yaml"


def stage_wandb_overrides(settings: Mapping[str, Any], *, group: str, name: str) -> list[str]:
    """Hydra overrides that make a stage log to W&B with the benchmark's ``logger.wandb`` settings
    (``+`` for keys that conf/logger/wandb.yaml lacks), in ``group``, as run ``name``."""
    from omegaconf import OmegaConf
    known = set(OmegaConf.load(LOGGER_YAML).wandb)
    out = ["logger=wandb"]
    for key, value in {**settings, "group": group}.items():
        if key not in _STAGE_OWN:
            out.append(f"{'' if key in known else '+'}logger.wandb.{key}={hydra_override_value(value)}")
    return out + [f"logger.wandb.name={hydra_override_value(name)}"]


def leaderboard_wandb_args(settings: Mapping[str, Any], *, group: str) -> list[str]:
    """``ssl-bench leaderboard`` W&B options from ``logger.wandb`` settings."""
    args = ["--wandb-project", str(settings.get("project")), "--wandb-group", group]
    args += ["--wandb-entity", str(settings["entity"])] if settings.get("entity") else []
    args += [a for t in (settings.get("tags") or []) for a in ("--wandb-tag", str(t))]
    return args + (["--wandb-mode", "offline"] if settings.get("offline") else [])


__all__ = ["finish_experiment", "finish_run", "is_wandb_config", "layer_rows", "leaderboard_run", "log_leaderboard",
           "hydra_override_value", "leaderboard_wandb_args", "offline_unless_reachable", "stable_run_id",
           "results_run", "stage_wandb_overrides", "tcp_reachable", "wandb_experiments", "wandb_host",
           "wandb_run_kwargs"]
