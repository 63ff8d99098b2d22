"""Image grids of colorizations (grey input | prediction | ground truth) for logs and the demo."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_bench import color
from ssl_bench.pretext.common import save_grid


def save_colorization_grid(L: Tensor, ab_pred: Tensor, ab_true: Tensor, path: str | Path) -> Path:
    """Write a PNG with one row per image: grey input, prediction, ground truth.

    Args:
        L: N x 1 x H x W lightness (0..100) at full resolution.
        ab_pred, ab_true: N x 2 x h x w (upsampled bilinearly to H x W, as the colorize tool does).
    """
    n = min(L.shape[0], ab_pred.shape[0])
    L = L[:n].float()
    size = L.shape[-2:]

    def up(ab: Tensor) -> Tensor:
        return F.interpolate(ab[:n].float(), size=size, mode="bilinear", align_corners=False)

    grey = color.lab_to_rgb(torch.cat([L, torch.zeros_like(up(ab_pred))], 1))
    pred = color.lab_to_rgb(torch.cat([L, up(ab_pred)], 1))
    true = color.lab_to_rgb(torch.cat([L, up(ab_true)], 1))
    rows = torch.stack([grey, pred, true], 1).flatten(0, 1)
    return save_grid(rows, Path(path), ncol=3)
