"""Layout check shared by the colour functions, which all take N x C x H x W tensors."""

from __future__ import annotations

from torch import Tensor


def check_nchw(x: Tensor, channels: int, name: str) -> None:
    """Raise ValueError unless x is N x ``channels`` x H x W."""
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must be N x {channels} x H x W, got {tuple(x.shape)}")
