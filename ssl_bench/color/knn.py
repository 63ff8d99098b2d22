"""Exact K nearest bins of ab points, fast enough for the training hot path on a CPU.

A point's nearest grid point ("centre") is round(ab / 10); its offset from it, (u, v), lies in
[-5, 5]^2. Three searches, all exact, each taking what the previous one cannot prove:

* pattern path (most points): the K nearest grid points, in order, depend only on (u, v), and
  are constant on most cells of a fine grid over the offset square. Such a cell stores a
  pattern id; if the K points of that pattern around the centre are all bins, they are the
  answer. No sorting at all, which is what makes the naive method slow on a CPU.
* general path (offsets near a change of order, points near the gamut border or outside):
  a short candidate list, a few vectorised sorting passes, and a proof-or-fallback check.
* exhaustive search over all 313 bins for whatever the general path cannot prove.

All three order by packed (distance, bin) keys (grid.py), so they agree bit for bit, exact ties
included (to the lower bin index). Points are float32 2 x P (row 0: a, row 1: b).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssl_bench.color.bins import GRID, NUM_BINS, gamut_const
from ssl_bench.color.grid import (
    CENTRE_MAX,
    IDX_MASK,
    TAB_HALF,
    TAB_SIZE,
    WIN_R,
    centre_table,
    grid_keytab,
    pack,
    unpack_d2,
)
from ssl_bench.color.knn_tables import GENERAL_CELLS, PATTERN_CELLS, general_tables, pattern_tables

__all__ = ["knn", "pattern_knn", "general_keys", "brute_keys"]

_N_PASSES = 3  # odd-even transposition passes of the general search
_PATTERN_MAX_K = 13  # above: many more patterns, slower table build; general search only
_KNN_CHUNK = 1 << 16  # points per step of the nearest-bin search
_BRUTE_CHUNK = 1 << 12  # points per step of the exhaustive search (x 313 candidates)
# Why chunks: chunk-sized temporaries stay in cache and are recycled by the allocator, while
# batch-sized ones stream through main memory (and can be fresh memory to page in on every call).


# ---------------------------------------------------------------------------------------------
# Per-point geometry
# ---------------------------------------------------------------------------------------------


def _centre(x: Tensor) -> tuple[Tensor, Tensor]:
    """x: float32 2 x P (a; b). Returns the nearest grid point c (2 x P, grid steps) and the
    offset uv = x - 10 c (2 x P, ab units).

    Centres are clamped to +-CENTRE_MAX steps, and NaN is sent there too: such a centre is far
    from every bin, so the table paths reject the point and the exhaustive search takes it.
    uv is exact in float32 (Sterbenz), so (uv - du) rounds exactly as (x - bin centre) does:
    every search path and the exhaustive one see bit-identical distances.
    """
    c = torch.round(x * (1.0 / GRID)).nan_to_num_(CENTRE_MAX).clamp_(-CENTRE_MAX, CENTRE_MAX)
    return c, torch.sub(x, c, alpha=GRID)


def _cell(uv: Tensor, m: int) -> Tensor:
    """Cell (of m x m over the offset square) of each offset: int32 P."""
    q = torch.add(uv, GRID / 2).mul_(m / GRID).nan_to_num_(0.0).clamp_(0, m - 1).to(torch.int32)
    return q[0].mul(m).add_(q[1])


def _flat_centre(c: Tensor) -> Tensor:
    """Position of centres c (2 x P, grid steps) in the flat grid table: int64 P."""
    return c[0].mul(TAB_SIZE).add_(c[1]).add_(TAB_HALF * (TAB_SIZE + 1)).to(torch.int64)


def _sq_dist(du: Tensor, dv: Tensor, uv: Tensor, dim: int) -> Tensor:
    """Squared distances from offsets uv (2 x P) to candidate offsets du, dv (P x C if dim is 1,
    C x P if dim is 0), in place on du."""
    return du.sub_(uv[0].unsqueeze(dim)).square_().add_(dv.sub_(uv[1].unsqueeze(dim)).square_())


# ---------------------------------------------------------------------------------------------
# The three searches
# ---------------------------------------------------------------------------------------------


def brute_keys(x: Tensor, k: int) -> Tensor:
    """Exhaustive search over all 313 centres. x: float32 2 x P. Returns keys P x k, sorted."""
    cen = gamut_const(x.device, torch.float32)
    ids = torch.arange(NUM_BINS, device=x.device)
    out = torch.empty(x.shape[1], k, dtype=torch.int64, device=x.device)
    for s in range(0, x.shape[1], _BRUTE_CHUNK):
        a, b = x[0, s : s + _BRUTE_CHUNK, None], x[1, s : s + _BRUTE_CHUNK, None]
        d2 = (a - cen[:, 0]).square_() + (b - cen[:, 1]).square_()
        out[s : s + _BRUTE_CHUNK] = torch.topk(pack(d2, ids), k, dim=1, largest=False).values
    return out


def _transposition_sort(keys: Tensor, passes: int) -> None:
    """Odd-even transposition passes along dim 1 of keys (P x C), in place."""
    p, c = keys.shape
    for step in range(passes):
        s = step % 2
        n_pairs = (c - s) // 2
        pair = keys[:, s : s + 2 * n_pairs].view(p, n_pairs, 2)
        lo = torch.minimum(pair[..., 0], pair[..., 1])
        pair[..., 1] = torch.maximum(pair[..., 0], pair[..., 1])
        pair[..., 0] = lo


def general_keys(x: Tensor, k: int) -> Tensor:
    """Exact k nearest bins of points anywhere (float32 2 x P): sorted packed keys P x k.

    Each point gets C = k + 4 candidate grid points in the order of its cell's centre; a few
    odd-even transposition passes, vectorised over points, sort them for the point itself. The
    result is accepted only when provably right: the first k are sorted and precede the other
    candidates, and the k-th is nearer than any non-candidate can be (the cell's bound; grid
    points outside the gamut sort last, so a k-th that is not a bin fails it, as for clamped
    centres). The rest (rare unfinished sorts, far outside the gamut, NaN) goes to the
    exhaustive search. The cell guarantees hold on closed cells with margins far above the
    ~1e-6 by which rounding of round(x / 10) can put a point outside its cell.
    """
    p = x.shape[1]
    if p == 0 or k + 4 > (2 * WIN_R + 1) ** 2:
        return brute_keys(x, k)
    delta, du, dv, bound, c = general_tables(k, x.device)
    centre, uv = _centre(x)
    cell = _cell(uv, GENERAL_CELLS)
    pos = torch.index_select(delta, 0, cell).add_(_flat_centre(centre)[:, None])
    tabval = torch.index_select(grid_keytab(x.device), 0, pos.view(-1)).view(p, c)
    d2 = _sq_dist(torch.index_select(du, 0, cell), torch.index_select(dv, 0, cell), uv, 1)
    keys = pack(d2, tabval)
    _transposition_sort(keys, _N_PASSES)
    kth = keys[:, k - 1]
    ok = kth < torch.index_select(bound, 0, cell)
    ok &= (keys[:, : k - 1] < keys[:, 1:k]).all(1)
    ok &= (keys[:, k:] > kth[:, None]).all(1)
    out = keys[:, :k].contiguous()
    bad = (~ok).nonzero().squeeze(1)
    if bad.numel() > 0:
        out[bad] = brute_keys(x[:, bad], k)
    return out


def pattern_knn(x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pattern path on float32 2 x P points: (bins int16 k x P, d^2 float32 k x P, rows int64 that
    it could not settle; their bins and d^2 are garbage and must be filled by another path)."""
    p = x.shape[1]
    if k > _PATTERN_MAX_K:
        z = torch.zeros(k, p, device=x.device)
        return z.short(), z, torch.arange(p, device=x.device)
    lut, bins, valid, du, dv = pattern_tables(k, x.device)
    centre, uv = _centre(x)
    cbin = torch.index_select(centre_table(x.device), 0, _flat_centre(centre))
    pat = torch.index_select(lut, 0, _cell(uv, PATTERN_CELLS)).to(torch.int64)
    key = pat.mul(NUM_BINS + 1).add_(cbin)
    ok = torch.index_select(valid, 0, key)
    # K-major: one 1-D gather per neighbour rank, then every later op runs on contiguous rows.
    idx = torch.empty(k, p, dtype=torch.int16, device=x.device)
    for j in range(k):
        torch.index_select(bins[j], 0, key, out=idx[j])
    d2 = _sq_dist(torch.index_select(du, 1, pat), torch.index_select(dv, 1, pat), uv, 0)
    return idx, d2, (~ok).nonzero().squeeze(1)


def knn(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact k nearest bins of float32 points 2 x P (a; b), K-major so that callers work on
    contiguous rows: (bins int16 k x P, d^2 float32 k x P), sorted by distance, exact ties to the
    lower bin index."""
    p = x.shape[1]
    dev = x.device
    idx = torch.empty(k, p, dtype=torch.int16, device=dev)
    d2 = torch.empty(k, p, dtype=torch.float32, device=dev)
    rest = []
    for s in range(0, p, _KNN_CHUNK):
        e = min(s + _KNN_CHUNK, p)
        idx[:, s:e], d2[:, s:e], r = pattern_knn(x[:, s:e], k)
        rest.append(r + s)
    # What the pattern path left (a few percent), all at once: the general search's cost is
    # mostly per call at these sizes.
    left = torch.cat(rest) if rest else torch.empty(0, dtype=torch.int64, device=dev)
    for s in range(0, left.numel(), _KNN_CHUNK):
        cols = left[s : s + _KNN_CHUNK]
        keys = general_keys(x[:, cols], k).t()
        idx[:, cols] = (keys & IDX_MASK).to(torch.int16)
        d2[:, cols] = unpack_d2(keys)
    return idx, d2
