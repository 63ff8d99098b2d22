"""A suite checkpoint out as plain PyTorch: the trunk's state dict and a model card.

    DIR/state_dict.pt      the trunk's tensors under AlexNet's key names (``conv1.0.weight`` ...), nothing
                           else: ``torch.load(path, weights_only=True)`` reads it
    DIR/model_card.json    architecture, constructor arguments, geometry, input space and convention,
                           where the weights came from, the training run's config and results when found

``ssl-bench import-weights state-dict --weights DIR/state_dict.pt --trunk-config DIR/model_card.json``
rebuilds the same trunk, bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ssl_bench.errors import ConfigError
from ssl_bench.io import atomic_write_text, atomic_writer
from ssl_bench.models.checkpoint import SuiteCheckpoint, read_checkpoint, read_suite_checkpoint
from ssl_bench.weights.convention import InputConvention, suite_convention

__all__ = ["CARD_FORMAT", "FORMATS", "export_checkpoint", "model_card"]

CARD_FORMAT = 1
FORMATS = ("state-dict",)
ARCHITECTURE = "ssl_bench.models.alexnet.AlexNet"


def _near(checkpoint: Path, name: str) -> Path | None:
    """``name`` beside the checkpoint or in its run folder (a run keeps checkpoints/ under its folder)."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / name).is_file():
            return folder / name
    return None


def _training(checkpoint: Path) -> dict[str, Any] | None:
    """The run's config (Hydra's ``.hydra/config.yaml`` of the run folder) and the checkpoint's step."""
    import yaml

    found: dict[str, Any] = {}
    config = _near(checkpoint, ".hydra/config.yaml")
    if config is not None:
        try:
            found["config"] = yaml.safe_load(config.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            found["config_file"] = str(config)
    raw = read_checkpoint(checkpoint)
    for key in ("epoch", "global_step"):
        if isinstance(raw.get(key), int):
            found[key] = raw[key]
    return found or None


def _results(checkpoint: Path) -> Any:
    path = _near(checkpoint, "results.json")
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} (the results next to the checkpoint) is not valid JSON: {e}") from e


def model_card(checkpoint: Path, opened: SuiteCheckpoint) -> dict[str, Any]:
    """The model card of an opened suite checkpoint (JSON-ready)."""
    meta = opened.meta
    trunk = dict(meta["trunk"])
    space = meta.get("input_space", trunk.get("input_space", "L"))
    recorded = meta.get("input_convention")
    convention = InputConvention.from_dict(recorded) if recorded else suite_convention(space)
    card = {
        "format": CARD_FORMAT,
        "architecture": trunk.get("_target_", ARCHITECTURE),
        "trunk": trunk,
        "geometry": trunk.get("geometry", "train"),
        "input_space": space,
        "input_convention": convention.to_dict(),
        "method": opened.method,
        "source": str(meta.get("source", checkpoint)),
        "pretext_settings": {k: v for k, v in meta.items()
                             if k not in ("trunk", "input_space", "input_convention", "source")},
        "training": _training(checkpoint),
        "results": _results(checkpoint),
    }
    return json.loads(json.dumps(card, default=str))


def export_checkpoint(checkpoint: str | Path, out: str | Path, fmt: str = "state-dict") -> tuple[Path, Path]:
    """Write ``out/state_dict.pt`` and ``out/model_card.json`` for a suite checkpoint (each atomically).

    Returns:
        (state dict path, model card path).
    Raises:
        ConfigError (an unknown format, ``out`` a file), FileNotFoundError / CheckpointMismatchError
        (not a suite checkpoint).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format: expected one of {list(FORMATS)}, got {fmt!r}")
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    opened = read_suite_checkpoint(checkpoint)
    trunk = opened.load_native_trunk()
    state = {k: v.detach().cpu().clone().contiguous() for k, v in trunk.state_dict().items()}
    card = model_card(checkpoint, opened)
    weights, card_path = out / "state_dict.pt", out / "model_card.json"
    with atomic_writer(weights) as f:
        torch.save(state, f)
    atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
    return weights, card_path
