"""The 313 ab bins of the colorization targets (docs/protocols.md §1.2).

They are the authors' table, not a quantised sRGB gamut (which cannot reproduce it): centres on a
grid of step GRID, ordered by a ascending, then b ascending.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

__all__ = ["NUM_BINS", "GRID", "GAMUT_NP", "ab_gamut", "gamut_const"]

NUM_BINS: int = 313
GRID: float = 10.0

# (a, b_min, b_max) from docs/protocols.md §1.2.
_GAMUT_TABLE: tuple[tuple[int, int, int], ...] = (
    (-90, 50, 90),
    (-80, 20, 90),
    (-70, 0, 90),
    (-60, -20, 90),
    (-50, -30, 100),
    (-40, -40, 100),
    (-30, -50, 100),
    (-20, -50, 100),
    (-10, -60, 100),
    (0, -70, 100),
    (10, -80, 90),
    (20, -80, 90),
    (30, -90, 90),
    (40, -100, 90),
    (50, -100, 80),
    (60, -110, 80),
    (70, -110, 80),
    (80, -110, 70),
    (90, -110, 70),
    (100, -90, 0),
)


def _gamut_np() -> np.ndarray:
    pts = [(a, b) for a, lo, hi in _GAMUT_TABLE for b in range(lo, hi + 1, 10)]
    arr = np.asarray(pts, dtype=np.float64)
    assert arr.shape == (NUM_BINS, 2)
    return arr


# The bin centres, float64 NUM_BINS x 2 (a, b): the source of every table built from the bins.
GAMUT_NP: np.ndarray = _gamut_np()


@functools.cache
def gamut_const(device: torch.device, dtype: torch.dtype) -> Tensor:
    """The bin centres NUM_BINS x 2 as a shared, read-only constant (built once per device and
    dtype, so that hot paths do not copy the table on every call)."""
    return torch.as_tensor(GAMUT_NP, dtype=dtype, device=device)


def ab_gamut(
    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The 313 bin centres in the authors' order: 313 x 2 (a, b).

    Index 0 is (-90, 50), index 312 is (100, 0). Returns a fresh tensor (safe to modify).
    """
    return torch.as_tensor(GAMUT_NP, dtype=dtype, device=device).clone()
