"""Loading weights with errors that say what does not match."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model (message lists missing/unexpected/reshaped keys)."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointMismatchError(f"checkpoint {path} is not a readable torch file: {e}") from e
    if not isinstance(ckpt, dict):
        raise CheckpointMismatchError(f"checkpoint {path}: expected a dict, got {type(ckpt).__name__}")
    return ckpt


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str, prefix: str = "") -> None:
    """Raise CheckpointMismatchError unless ``state`` (keys stripped of ``prefix``) fits ``model`` exactly."""
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                      for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or reshaped:
        def show(xs: list[str]) -> str:
            return ", ".join(xs[:12]) + (f", ... ({len(xs)} in all)" if len(xs) > 12 else "") or "none"
        raise CheckpointMismatchError(
            f"checkpoint {source} does not match the model architecture: missing keys: {show(missing)}; "
            f"unexpected keys: {show(unexpected)}; shape mismatches: {show(reshaped)}")
