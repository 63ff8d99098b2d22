"""What every run shares: its clock, its results envelope, its device, and one line to the console."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ssl_bench.report.results import write_results

RESULTS_NAME = "results.json"


class RunClock:
    """Wall-clock start (for the record) and a monotonic clock (for durations) of one run."""

    def __init__(self) -> None:
        self.started = datetime.now(timezone.utc)
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def envelope(clock: RunClock, cfg: DictConfig) -> dict[str, Any]:
    """The fields every results.json carries besides its own: seed, times, resolved config
    (provenance, i.e. versions and git commit, is added by :func:`write_results`)."""
    return {"seed": cfg.get("seed"), "started": clock.started.isoformat(),
            "finished": datetime.now(timezone.utc).isoformat(), "wall_time_s": clock.elapsed(),
            "config": OmegaConf.to_container(cfg, resolve=True)}


def finish_record(record: dict[str, Any], clock: RunClock, cfg: DictConfig, out_dir: str | Path | None,
                  write: bool = True) -> dict[str, Any]:
    """Complete ``record`` with the envelope and, when ``write``, write ``out_dir/results.json``."""
    record = {**record, **envelope(clock, cfg)}
    if write and out_dir is not None:
        write_results(Path(out_dir) / RESULTS_NAME, record)
    return record


def device_for(accelerator: str) -> str:
    """The device a single-process evaluation runs on, from ``trainer.accelerator``."""
    import torch
    return "cuda" if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda") else "cpu"


def key_value_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``checkpoint=x`` / ``sentinel_fraction=0.2`` -> ``--checkpoint x`` / ``--sentinel-fraction 0.2``,
    for the parser's own ``--`` flags only (any other token is left as it is)."""
    known = {s[2:] for a in parser._actions for s in a.option_strings if s.startswith("--")}
    out: list[str] = []
    for tok in argv:
        if not tok.startswith("-") and "=" in tok:
            key, value = tok.split("=", 1)
            flag = key.strip().replace("_", "-")
            if flag in known:
                out += [f"--{flag}", value]
                continue
        out.append(tok)
    return out
