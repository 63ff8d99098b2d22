"""The ab plane as a grid of step GRID around the bins, and the packed sort keys of the search.

The nearest-bin search (knn.py) works in grid steps: a point's nearest grid point is its
"centre", and its candidate bins are grid points at small offsets from that centre. This module
holds the flat table that says which grid point is which bin, and the int64 key format in which
the search sorts (distance, bin) pairs.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from ssl_bench.color.bins import GAMUT_NP, GRID, NUM_BINS

__all__ = [
    "WIN_R",
    "CENTRE_MAX",
    "TAB_HALF",
    "TAB_SIZE",
    "BIN_FLAT_NP",
    "GRID_TABLE_NP",
    "IDX_BITS",
    "IDX_MASK",
    "centre_table",
    "grid_keytab",
    "pack",
    "unpack_d2",
]

# Grid table: grid point (a/10, b/10) for a, b in [-TAB_HALF, TAB_HALF] grid steps, flattened.
# Centres are clamped to +-CENTRE_MAX steps and candidates lie within WIN_R steps of their
# centre, so every lookup stays inside the table.
WIN_R = 5  # general search: candidates come from an 11 x 11 window of grid points
CENTRE_MAX = 20  # centres clamped to +-200 in ab; such points go to the exhaustive search
TAB_HALF = CENTRE_MAX + WIN_R
TAB_SIZE = 2 * TAB_HALF + 1
# Flat grid-table position of each bin centre (NUM_BINS,).
BIN_FLAT_NP = (np.rint(GAMUT_NP / GRID).astype(np.int64) + TAB_HALF) @ np.array([TAB_SIZE, 1])


def _grid_table_np() -> np.ndarray:
    """Flattened TAB_SIZE^2 table: bin index of each grid point, -1 outside the gamut."""
    tab = np.full(TAB_SIZE * TAB_SIZE, -1, dtype=np.int64)
    tab[BIN_FLAT_NP] = np.arange(NUM_BINS)
    return tab


GRID_TABLE_NP = _grid_table_np()

# Packed sort keys: (float32 bit pattern of d^2) << 9 | bin index. Bit patterns of non-negative
# floats order like the floats, so one int64 comparison orders by distance and breaks exact ties
# by the lower bin index: unique keys make every path deterministic and mutually consistent.
IDX_BITS = 9
IDX_MASK = (1 << IDX_BITS) - 1
# Grid points outside the gamut get a bit above any packed distance: they sort after all bins.
_KEY_OUT = (1 << 41) | IDX_MASK
_GRID_KEYTAB_NP = np.where(GRID_TABLE_NP >= 0, GRID_TABLE_NP, _KEY_OUT)


@functools.cache
def centre_table(device: torch.device) -> Tensor:
    """The grid table with "not a bin" as 313 instead of -1 (see knn_tables.pattern_tables)."""
    return torch.as_tensor(np.where(GRID_TABLE_NP >= 0, GRID_TABLE_NP, NUM_BINS), device=device)


@functools.cache
def grid_keytab(device: torch.device) -> Tensor:
    """The grid table as key low bits: the bin index, or a value that sorts after every bin."""
    return torch.as_tensor(_GRID_KEYTAB_NP, device=device)


def pack(d2: Tensor, tabval: Tensor) -> Tensor:
    """float32 d^2 >= 0 and grid-table values (bin index, or _KEY_OUT) -> int64 sort keys."""
    return (d2.view(torch.int32).to(torch.int64) << IDX_BITS) | tabval


def unpack_d2(keys: Tensor) -> Tensor:
    """The float32 d^2 of packed keys."""
    return (keys >> IDX_BITS).to(torch.int32).view(torch.float32)
