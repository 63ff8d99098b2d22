"""What every run shares: its clock, its results envelope, its device, and one line to the console."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ssl_bench.errors import ConfigError
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
    """The fields every results.json carries besides its own: seed, the precision the run computed in
    (``fastest`` resolved, :func:`run_precision`), times, resolved config (provenance, i.e. versions and
    git commit, is added by :func:`write_results`)."""
    return {"seed": cfg.get("seed"), "precision": run_precision(cfg), "started": clock.started.isoformat(),
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


FASTEST = "fastest"
FP32 = "32-true"
BF16 = "bf16-mixed"
# CPU features that compute bf16 in hardware (without them autocast emulates bf16 through fp32)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature names: torch's own detection, or the flags of ``cpuinfo`` (Linux) where torch has none."""
    import torch
    detect = getattr(torch.cpu, "get_capabilities", None)
    if detect is not None:
        return {str(k) for k, v in detect().items() if v is True}
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


def native_bf16(device: str) -> bool:
    """Whether ``device`` ("cpu" or "cuda") computes bf16 natively (a CUDA GPU from Ampere on; a CPU
    with AVX512-BF16 or AMX-BF16), i.e. whether bf16 autocast is faster there rather than emulated."""
    import torch
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return bool(cpu_flags() & set(CPU_BF16_FLAGS))


def resolve_precision(requested: str, device: str) -> str:
    """The Lightning precision a run uses: ``fastest`` is bf16-mixed where ``device`` has native bf16 and
    32-true where bf16 would be emulated; any other value (32-true, bf16-mixed, 16-mixed, ...) as given."""
    if requested != FASTEST:
        return requested
    return BF16 if native_bf16(device) else FP32


def run_precision(cfg: DictConfig) -> str:
    """The precision of the run configured by ``cfg`` (its ``precision`` key, on the device of its
    ``trainer.accelerator``); runs without the key (colorization quality) compute in fp32."""
    requested = cfg.get("precision")
    if requested is None:
        return FP32
    trainer = cfg.get("trainer")
    return resolve_precision(str(requested), device_for(trainer.get("accelerator", "auto") if trainer else "auto"))


def recipe_settings(recipe: DictConfig, *sections: DictConfig | None) -> dict[str, Any]:
    """The recipe's values as a run uses them, resolved to plain values.

    A job config exposes some recipe values under its own keys too (``probe.epochs: ${recipe.epochs}``),
    so either spelling can be overridden; the first of ``sections`` that has a key gives its value,
    and that value (not the recipe file's) is what the run records and compares with the paper's.
    """
    out: dict[str, Any] = {}
    for key in recipe:
        source = next((s for s in sections if s is not None and key in s), recipe)
        value = source[key]
        out[str(key)] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def world_size(trainer: Any) -> int:
    """Processes a Lightning run of ``trainer`` (a ``trainer`` config) uses: devices x nodes.

    An initialised process group answers for itself; otherwise ``devices`` is read as Lightning
    does: a count, a list or comma-separated string of device ids, or "auto"/-1 (every visible GPU
    on a GPU accelerator, one process on the CPU)."""
    import torch
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    devices = trainer.get("devices", 1)
    nodes = int(trainer.get("num_nodes", 1) or 1)
    if isinstance(devices, str) and "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])
    elif isinstance(devices, Sequence) and not isinstance(devices, str):
        count = len(devices)
    elif str(devices) in ("auto", "-1"):
        gpu = trainer.get("accelerator", "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        count = torch.cuda.device_count() if gpu else 1
    else:
        count = int(devices)
    return max(1, count) * max(1, nodes)


def per_device_batch(global_batch: int, world: int, key: str) -> int:
    """The batch each of ``world`` processes takes so that together they take the recipe's global
    batch; a global batch that does not split evenly is an error naming the config ``key``."""
    if global_batch % world:
        raise ConfigError(f"{key}={global_batch} is the global batch and must split evenly over the {world} "
                         f"processes (trainer.devices x trainer.num_nodes); choose devices that divide it")
    return global_batch // world


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
