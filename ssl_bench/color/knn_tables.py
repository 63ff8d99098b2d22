"""Precomputed tables of the exact nearest-bin search (knn.py), built once per k and device.

Both tables are indexed by the cell of a point's offset from its centre (its nearest grid
point), in grid steps within [-1/2, 1/2]^2:

* pattern table: on most cells of a fine grid the K nearest grid points, in order, never change;
  such a cell stores that order (a "pattern"), and the search reads the answer off without
  sorting.
* general table: for every cell of a coarse grid, a short candidate list ordered by distance
  from the cell centre, and a bound that proves when the candidates hold the K nearest.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from ssl_bench.color.bins import GRID, NUM_BINS
from ssl_bench.color.grid import BIN_FLAT_NP, GRID_TABLE_NP, IDX_BITS, TAB_SIZE, WIN_R

__all__ = ["GENERAL_CELLS", "PATTERN_CELLS", "pattern_tables", "general_tables"]

GENERAL_CELLS = 64  # cells per axis of the general search's candidate table
PATTERN_CELLS = 2048  # cells per axis of the pattern table (even)


def _window(r: int) -> np.ndarray:
    """Offsets (grid steps, float64) of the (2r + 1)^2 window, row-major."""
    rr = np.arange(-r, r + 1)
    return np.stack(np.meshgrid(rr, rr, indexing="ij"), -1).reshape(-1, 2).astype(np.float64)


def _unique_rows(rows: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(rows, axis=0, return_inverse=True) for rows of ints in [0, base); faster, as rows
    are encoded into one int64 when they fit (np.unique over a row axis sorts slowly)."""
    n, k = rows.shape
    if float(base) ** k >= 2.0**62:
        uniq, inv = np.unique(rows, axis=0, return_inverse=True)
        return uniq, inv.reshape(-1)
    code = np.zeros(n, dtype=np.int64)
    for j in range(k):
        code = code * base + rows[:, j]
    _, first, inv = np.unique(code, return_index=True, return_inverse=True)
    return rows[first], inv.reshape(-1)


# ---------------------------------------------------------------------------------------------
# Pattern table
# ---------------------------------------------------------------------------------------------


def _pattern_radius(k: int) -> int:
    """Window radius r (grid steps) for the pattern table: the window's edge, r + 1/2 away, lies
    beyond the k-th nearest grid point of a corner of the central cell. (The table build checks
    this per cell and rejects any cell where it fails, so r only needs to be good, not exact.)"""
    r = 1
    while True:
        off = _window(r + 1)
        d = np.sort(np.hypot(off[:, 0] - 0.5, off[:, 1] - 0.5))[k - 1]
        if d < r + 0.5 - 0.05:
            return r
        r += 1


def _canonical_orders(
    k: int, m: int, margin: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Strictly separated k-nearest orders at the canonical vertices p >= q >= 0 (in 1/m).

    Returns (window offsets n_off x 2; canonical patterns as rows of k offset indices; pattern id
    of each canonical vertex, row p (p + 1) / 2 + q, -1 where the order is not separated).
    """
    r = _pattern_radius(k)
    off = _window(r)
    cp, cq = np.tril_indices(m // 2 + 1)
    d2 = (cp[:, None] / m - off[:, 0]) ** 2 + (cq[:, None] / m - off[:, 1]) ** 2
    part = np.argpartition(d2, k, axis=1)[:, : k + 1]
    dpart = np.take_along_axis(d2, part, 1)
    srt = np.argsort(dpart, axis=1, kind="stable")
    order = np.take_along_axis(part, srt, 1)
    dd = np.take_along_axis(dpart, srt, 1)
    ok = (np.diff(dd, axis=1) > margin).all(1) & (dd[:, k - 1] < (r + 0.5) ** 2 - margin)
    canon, canon_id = _unique_rows(order[:, :k][ok], len(off))
    cid = np.full(len(cp), -1, dtype=np.int32)
    cid[ok] = canon_id
    return off, canon, cid


def _symmetry_perms(off: np.ndarray) -> np.ndarray:
    """The 8 symmetries of the square, t = [u negated] + 2 [v negated] + 4 [swapped], as
    permutations of the window offsets: 8 x n_off."""
    lookup = {(int(a), int(b)): i for i, (a, b) in enumerate(off)}
    perm = np.empty((8, len(off)), dtype=np.int64)
    for t in range(8):
        su, sv, sw = (-1 if t & 1 else 1), (-1 if t & 2 else 1), bool(t & 4)
        for i, (a, b) in enumerate(off):
            ca, cb = (b, a) if sw else (a, b)
            perm[t, i] = lookup[(int(su * ca), int(sv * cb))]
    return perm


def _vertex_ids(cid: np.ndarray, final: np.ndarray, m: int) -> np.ndarray:
    """Pattern id at every vertex of the m x m cells, (m + 1) x (m + 1), -1 where none: each
    vertex takes the id of its canonical image (cid) under the symmetry t that maps it there
    (final: canonical pattern x t -> pattern id)."""
    iv = np.arange(m + 1, dtype=np.int32) - m // 2
    au, av = np.abs(iv)[:, None], np.abs(iv)[None, :]
    hi, lo = np.maximum(au, av), np.minimum(au, av)
    t = ((iv < 0)[:, None] * 1 + (iv < 0)[None, :] * 2 + (av > au) * 4).astype(np.int32)
    c = cid[hi * (hi + 1) // 2 + lo]
    final = np.concatenate([final.astype(np.int32), np.full((1, 8), -1, dtype=np.int32)])
    return final[c, t]  # c = -1 picks the appended row of -1


def _pattern_lut_np(
    k: int, m: int = PATTERN_CELLS, margin: float = 1e-4
) -> tuple[np.ndarray, np.ndarray]:
    """Cells of the offset square in which the k nearest grid points, in order, never change.

    The offset (in grid steps) lies in [-1/2, 1/2]^2, cut into m x m cells. At every cell vertex
    take the k nearest points of the window (radius r) in order, and keep it only if strictly
    separated: consecutive squared distances differ by more than ``margin``, the (k+1)-th is more
    than ``margin`` farther than the k-th, and the k-th is nearer than the window's edge. A cell
    is accepted when its four vertices have the same order. That order then holds on the whole
    closed cell, with the margin to spare for float rounding: the difference of two squared
    distances is linear in the point, so a strict inequality at the vertices holds at every convex
    combination; the k-th distance is convex, so it stays inside the window. Few orders occur
    ("patterns": 96 for k = 10).

    Only the 1/8 of the vertices with 0 <= v <= u are computed; the rest follow from the square's
    symmetries, which map grid and vertices onto themselves exactly.
    Returns (cell -> pattern id, int16 m*m, -1 where not accepted; patterns x k x 2 offsets).
    """
    assert m % 2 == 0
    off, canon, cid = _canonical_orders(k, m, margin)
    perm = _symmetry_perms(off)
    variants = perm[:, canon].transpose(1, 0, 2).reshape(-1, k)  # row: canon pattern * 8 + t
    patterns, final = _unique_rows(variants, len(off))
    vid = _vertex_ids(cid, final.reshape(len(canon), 8), m)
    c00 = vid[:-1, :-1]
    clean = (c00 >= 0) & (c00 == vid[1:, :-1]) & (c00 == vid[:-1, 1:]) & (c00 == vid[1:, 1:])
    assert len(patterns) < 2**15
    return np.where(clean, c00, -1).reshape(-1).astype(np.int16), off[patterns]


@functools.cache
def pattern_tables(k: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Tables of the pattern path (K-major, so that results come out as k x P rows):
      lut   int16 cells: pattern id of each cell of the offset square; cells not accepted get
            the extra id `patterns`, which is never valid;
      bins  int16 k x ((patterns + 1) * 314): the pattern's k grid points around each bin as
            centre (centre 313 stands for "not a bin" and is never valid); int16 keeps each row
            in cache, and the output copy widens it for free;
      valid bool ((patterns + 1) * 314): all of those are bins (so they are the k nearest bins);
      du, dv float32 k x (patterns + 1): the pattern's offsets in ab units.
    """
    lut, offs = _pattern_lut_np(k)
    n_pat = len(offs)
    oi = offs.astype(np.int64)
    delta = oi[..., 0] * TAB_SIZE + oi[..., 1]  # patterns x k, steps in the flat grid table
    grid = np.full((n_pat + 1, NUM_BINS + 1, k), -1, dtype=np.int64)
    grid[:n_pat, :NUM_BINS] = GRID_TABLE_NP[BIN_FLAT_NP[None, :, None] + delta[:, None, :]]
    offs = np.concatenate([offs, np.zeros((1, k, 2))]) * GRID
    to = functools.partial(torch.as_tensor, device=device)
    return (
        to(np.where(lut >= 0, lut, n_pat).astype(np.int16)),
        to(np.ascontiguousarray(np.maximum(grid, 0).reshape(-1, k).T).astype(np.int16)),
        to((grid >= 0).all(-1).reshape(-1)),
        to(np.ascontiguousarray(offs[..., 0].T), dtype=torch.float32),
        to(np.ascontiguousarray(offs[..., 1].T), dtype=torch.float32),
    )


# ---------------------------------------------------------------------------------------------
# General table
# ---------------------------------------------------------------------------------------------


@functools.cache
def general_tables(k: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Tables of the general search, per cell of the offset square (GENERAL_CELLS per axis):
      delta  int64 cells x C: candidate grid points (C = k + 4) as steps in the flat grid table,
             ordered by distance from the cell centre, so a few sorting passes finish the job;
      du, dv float32 cells x C: the same offsets in ab units;
      bound  int64 cells: packed key of a lower bound on d^2 from ANY point of the closed cell to
             every grid point that is not a candidate. If a point's k-th candidate is nearer than
             that, no other grid point (hence no other bin) can be among its k nearest.
    """
    m = GENERAL_CELLS
    c = k + 4
    off = _window(WIN_R)
    edges = np.linspace(-0.5, 0.5, m + 1)
    mid = (edges[:-1] + edges[1:]) / 2
    cu, cv = np.meshgrid(mid, mid, indexing="ij")
    cen = np.stack([cu.ravel(), cv.ravel()], 1)
    half = 0.5 / m
    order = np.argsort(((cen[:, None, :] - off[None]) ** 2).sum(-1), axis=1, kind="stable")
    cand, rest = order[:, :c], order[:, c:]
    q = off[rest]
    nearest_in_cell = np.clip(q, (cen - half)[:, None], (cen + half)[:, None])
    bound = ((nearest_in_cell - q) ** 2).sum(-1).min(1)
    # Grid points outside the window are at least WIN_R + 1/2 steps away.
    bound = np.minimum(bound, (WIN_R + 0.5) ** 2) * GRID**2
    # Margin for float32 rounding of the run-time distances (ties that close are ambiguous anyway).
    bound = (bound * (1.0 - 1e-5)).astype(np.float32)
    oi = off[cand].astype(np.int64)
    to = functools.partial(torch.as_tensor, device=device)
    return (
        to(oi[..., 0] * TAB_SIZE + oi[..., 1]),
        to(off[cand][..., 0] * GRID, dtype=torch.float32),
        to(off[cand][..., 1] * GRID, dtype=torch.float32),
        to(bound.view(np.int32).astype(np.int64) << IDX_BITS),
        c,
    )
