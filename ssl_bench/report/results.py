"""results.json: the one file every run writes, read by the leaderboard.

Schema (version 1)::

    {
      "schema_version": 1,
      "kind": "pretrain",                  # later: "probe", "finetune", ...
      "method": "colorization/full",       # pretext/variant
      "status": "completed",
      "metrics": {"pretrain/loss": float, "pretrain/val_loss": float, ...},
      "dataset": {"name", "root", "fingerprint", "num_train", "num_val", "skipped_images"},
      "checkpoint": "checkpoints/last.ckpt",   # relative to the results file
      "samples": ["samples/final.png", ...],
      "seed": int, "wall_time_s": float, "started": ISO-8601, "finished": ISO-8601,
      "git_commit": str | null, "package_version": str, "torch_version": str, "device": str,
      "versions": {"python", "torch", "torchvision", "pytorch-lightning", "hydra-core", ...},
      "config": {...}                      # the fully resolved Hydra config
    }

Written atomically (temporary file in the same folder, then ``os.replace``), so a reader never sees
half a file and a killed run leaves either the previous file or none.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import ssl_bench
from ssl_bench.io import atomic_write_text

SCHEMA_VERSION = 1


def git_commit() -> str | None:
    """Commit of the installed source tree, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(ssl_bench.__file__).parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str | None]:
    """Versions of the interpreter and of the packages a result depends on."""
    from importlib.metadata import PackageNotFoundError, version
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "pytorch-lightning", "hydra-core", "numpy", "scikit-learn", "wandb"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def environment() -> dict[str, Any]:
    """Provenance of a result. A command that never imported torch (the study's statistics) ran on
    the CPU; importing torch here only to say so would cost it seconds."""
    vs = versions()
    torch = sys.modules.get("torch")
    device = torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else "cpu"
    return {"git_commit": git_commit(), "package_version": ssl_bench.__version__,
            "torch_version": vs["torch"], "device": device, "versions": vs}

def write_results(path: str | Path, record: dict[str, Any]) -> Path:
    """Add schema version and environment to ``record`` and write it atomically as JSON."""
    full = {"schema_version": SCHEMA_VERSION, **environment(), **record}
    return atomic_write_text(path, json.dumps(full, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(x: Any) -> Any:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"results.json: cannot serialise {type(x).__name__}")
