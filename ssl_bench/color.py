"""Colour space and target encoding for colorization (Zhang, Isola, Efros, ECCV 2016).

Everything here is a pure function on tensors laid out as N x C x H x W. Constants are built on
the device and dtype of the input (and cached per device/dtype), so the same code runs on CPU or GPU.

Conventions (reference: ``method.md`` sections 1.1-1.5):

* Lab is CIE Lab with a D65 white and the 2 degree observer, with exactly the constants of
  ``skimage.color.rgb2lab`` (sRGB matrix, ``0.008856`` / ``7.787`` linear segment), so that results
  can be compared with the authors' pipeline, which used scikit-image.
* The 313 ab bins are the authors' table (a ascending, then b ascending), on a grid of step 10.
* Soft encoding: the K nearest bin centres of every ab value, Gaussian weights with sigma = 5,
  normalised to sum to 1. Ties in distance are broken by the lower bin index, in every code path.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "NUM_BINS",
    "GRID",
    "rgb_to_lab",
    "lab_to_rgb",
    "lab_from_uint8",
    "ab_gamut",
    "soft_encode",
    "dense_soft_encoding",
    "nearest_bin",
    "bin_histogram",
    "smooth_prior",
    "empirical_prior",
    "rebalance_weights",
    "pixel_weights",
    "annealed_mean",
    "decode_mean",
    "decode_mode",
    "decode",
]

NUM_BINS: int = 313
GRID: float = 10.0

# ---------------------------------------------------------------------------------------------
# Colour space constants (identical to skimage.color.colorconv so results are comparable).
# ---------------------------------------------------------------------------------------------

_XYZ_FROM_RGB = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ],
    dtype=np.float64,
)
# skimage inverts the forward matrix rather than using the rounded published inverse.
_RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883], dtype=np.float64)
# Folding the white point into the matrix saves a full-resolution division per channel.
_XYZN_FROM_RGB = _XYZ_FROM_RGB / _WHITE_D65[:, None]

_LAB_EPS = 0.008856  # threshold of the linear segment of f(t), as in skimage
_LAB_KAPPA = 7.787
_LAB_OFFSET = 16.0 / 116.0
_LAB_INV_EPS = 0.2068966  # f(_LAB_EPS), threshold used by skimage's inverse


def _srgb_to_linear_np(v: np.ndarray) -> np.ndarray:
    return np.where(v > 0.04045, ((v + 0.055) / 1.055) ** 2.4, v / 12.92)


def _uint8_xyz_lut_np() -> np.ndarray:
    """3 (X/Xn, Y/Yn, Z/Zn) x 3 (R, G, B) x 256 table: the contribution of one 8-bit channel value.

    Computed in float64 once, so an 8-bit image costs three table look-ups and two adds per output
    channel instead of a power function per input channel.
    """
    lin = _srgb_to_linear_np(np.arange(256, dtype=np.float64) / 255.0)
    return _XYZN_FROM_RGB[:, :, None] * lin[None, None, :]


# ---------------------------------------------------------------------------------------------
# The 313 bins
# ---------------------------------------------------------------------------------------------

# (a, b_min, b_max) from method.md 1.2; the authors' bins, not a quantised sRGB gamut.
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


_GAMUT_NP = _gamut_np()

# Grid-index tables for the local search: grid point (a/10, b/10) for a, b in
# [-_TAB_HALF, _TAB_HALF] grid steps. Centres are clamped to +-_CENTRE_MAX steps and candidates lie
# within _WIN_R steps of their centre, so every lookup stays inside the table.
_WIN_R = 5  # candidate offsets are drawn from an 11 x 11 window of grid points
_CENTRE_MAX = 20  # centres clamped to +-200 in ab; anything farther falls back to brute force
_TAB_HALF = _CENTRE_MAX + _WIN_R
_TAB_SIZE = 2 * _TAB_HALF + 1


def _grid_table_np() -> np.ndarray:
    """Flattened (_TAB_SIZE x _TAB_SIZE) table: bin index of each grid point, -1 outside the gamut."""
    tab = np.full((_TAB_SIZE, _TAB_SIZE), -1, dtype=np.int64)
    ij = np.rint(_GAMUT_NP / GRID).astype(np.int64) + _TAB_HALF
    tab[ij[:, 0], ij[:, 1]] = np.arange(NUM_BINS)
    return tab.reshape(-1)


_GRID_TABLE_NP = _grid_table_np()

# Packed sort keys: (float32 bit pattern of d^2) << 9 | bin index. Bit patterns of non-negative
# floats order like the floats, so one int64 comparison orders by distance and breaks exact ties
# by the lower bin index: unique keys make every path deterministic and mutually consistent.
_IDX_BITS = 9
_IDX_MASK = (1 << _IDX_BITS) - 1
# Out-of-gamut grid points get a high bit above any packed distance, so they sort after all bins.
_KEY_OUT = (1 << 41) | _IDX_MASK
_GRID_KEYTAB_NP = np.where(_GRID_TABLE_NP >= 0, _GRID_TABLE_NP, _KEY_OUT)

_GENERAL_CELLS = 64  # LUT resolution (per axis) of the general local search
_N_PASSES = 3  # odd-even transposition passes of the general local search
_PATTERN_CELLS = 1024  # LUT resolution (per axis) of the pattern fast path (even)
_PATTERN_MAX_K = 16  # beyond this the general path is used (patterns multiply, cells get dirty)
_CHUNK = 1 << 19  # pixels per chunk: keeps temporaries small (big fresh buffers cost page faults)


def _cached(fn):
    """lru_cache keyed on hashable args (device, dtype, ints): constants are built once per device."""
    return functools.lru_cache(maxsize=None)(fn)


@_cached
def _gamut_const(device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.as_tensor(_GAMUT_NP, dtype=dtype, device=device)


@_cached
def _grid_table(device: torch.device) -> Tensor:
    return torch.as_tensor(_GRID_TABLE_NP, device=device)


@_cached
def _grid_keytab(device: torch.device) -> Tensor:
    return torch.as_tensor(_GRID_KEYTAB_NP, device=device)


@_cached
def _uint8_lut(device: torch.device, dtype: torch.dtype) -> Tensor:
    """3 x 3 x 256 table of _uint8_xyz_lut_np in the given dtype."""
    return torch.as_tensor(_uint8_xyz_lut_np(), dtype=dtype, device=device)


def _cell_centres(m: int) -> tuple[np.ndarray, float]:
    """Centres (m*m x 2, grid units) and half-width of the cells of [-1/2, 1/2]^2, row-major."""
    edges = np.linspace(-0.5, 0.5, m + 1)
    c = (edges[:-1] + edges[1:]) / 2
    cu, cv = np.meshgrid(c, c, indexing="ij")
    return np.stack([cu.ravel(), cv.ravel()], 1), 0.5 / m


def _window(r: int) -> np.ndarray:
    rr = np.arange(-r, r + 1)
    return np.stack(np.meshgrid(rr, rr, indexing="ij"), -1).reshape(-1, 2).astype(np.float64)


@_cached
def _general_lut(k: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Tables of the general local search (any gamut position), per cell of the offset (u, v).

    The offset of a point from its nearest grid point lies in [-5, 5]^2; it is cut into
    _GENERAL_CELLS^2 cells. Returns (delta, du, dv, bound_key, C):
      delta  int64 cells x C: candidate grid points as flat steps in the grid table, ordered by
             distance from the cell centre, so a few transposition passes finish the sort;
      du, dv float32 cells x C: the same offsets in ab units;
      bound_key int64 cells: packed key of a lower bound on d^2 from ANY point of the (closed)
             cell to every grid point that is not a candidate. If a point's k-th candidate is
             nearer than that bound, no other grid point (hence no other bin) can be among its
             k nearest: this is what makes the local search exact rather than approximate.
    """
    c = min(k + 4, (2 * _WIN_R + 1) ** 2)
    off = _window(_WIN_R)
    cen, half = _cell_centres(_GENERAL_CELLS)
    d2 = ((cen[:, None, :] - off[None]) ** 2).sum(-1)
    order = np.argsort(d2, axis=1, kind="stable")
    cand, rest = order[:, :c], order[:, c:]
    q = off[rest]
    nearest_in_cell = np.clip(q, (cen - half)[:, None], (cen + half)[:, None])
    bound = ((nearest_in_cell - q) ** 2).sum(-1).min(1) if rest.shape[1] else np.full(len(cen), np.inf)
    # Grid points outside the window are at least (_WIN_R + 0.5) grid steps away.
    bound = np.minimum(bound, (_WIN_R + 0.5) ** 2) * GRID**2
    # Margin for float32 rounding of the run-time distances (ties that close are ambiguous anyway).
    bound = (bound * (1.0 - 1e-5)).astype(np.float32)
    bound_key = bound.view(np.int32).astype(np.int64) << _IDX_BITS
    oi = off[cand].astype(np.int64)
    to = functools.partial(torch.as_tensor, device=device)
    return (
        to(oi[..., 0] * _TAB_SIZE + oi[..., 1]),
        to(off[cand][..., 0] * GRID, dtype=torch.float32),
        to(off[cand][..., 1] * GRID, dtype=torch.float32),
        to(bound_key),
        c,
    )


def _pattern_radius(k: int) -> int:
    """Smallest window radius r (grid steps) whose edge, r + 1/2 away, is beyond the k-th nearest
    grid point even for a point at a corner of the central cell (the worst case)."""
    r = 1
    while True:
        off = _window(r + 1)
        d = np.sort(np.hypot(off[:, 0] - 0.5, off[:, 1] - 0.5))[k - 1]
        if d < r + 0.5 - 0.05:
            return r
        r += 1


def _unique_rows(rows: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(rows, axis=0, return_inverse=True) for rows of ints in [0, base), faster: rows are
    encoded as one int64 when they fit (np.unique on a row axis sorts slowly)."""
    n, k = rows.shape
    if base**k >= 2**62:
        uniq, inv = np.unique(rows, axis=0, return_inverse=True)
        return uniq, inv.reshape(-1)
    code = np.zeros(n, dtype=np.int64)
    for j in range(k):
        code = code * base + rows[:, j]
    ucode, first, inv = np.unique(code, return_index=True, return_inverse=True)
    return rows[first], inv.reshape(-1)


def _pattern_lut_np(k: int, m: int = _PATTERN_CELLS, margin: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Cells of the offset square in which the k nearest grid points, in order, never change.

    The offset (grid units) of a point from its nearest grid point lies in [-1/2, 1/2]^2, cut into
    m x m cells. At every cell vertex we take the k nearest points of the window (radius r) in
    order, and keep it only when it is strictly separated: consecutive distances^2 differ by more
    than ``margin``, the (k+1)-th is more than ``margin`` farther than the k-th, and the k-th is
    nearer than the window edge. A cell is accepted when its four vertices have the same order.
    That order then holds on the whole closed cell (with the margin to spare for float rounding):
    the difference of two squared distances is linear in the point, so a strict inequality at
    the four vertices holds at every convex combination; and the k-th distance is convex, so it
    stays inside the window. There are few distinct orders ("patterns", 96 for k = 10).

    Only the 1/8 of the vertices with 0 <= v <= u are computed; the rest follow by the square's
    symmetries, which map the grid and the vertices onto themselves exactly.
    Returns (cell -> pattern id, int16/int32 m*m, -1 where not accepted; patterns x k x 2 offsets).
    """
    assert m % 2 == 0
    r = _pattern_radius(k)
    off = _window(r)
    n_off = len(off)
    h = m // 2
    # Canonical vertices: p >= q >= 0 in units of 1/m; row index of (p, q) is p(p+1)/2 + q.
    cp, cq = np.tril_indices(h + 1)
    x = np.stack([cp, cq], 1) / m
    d2 = ((x[:, None, :] - off[None]) ** 2).sum(-1)
    part = np.argpartition(d2, k, axis=1)[:, : k + 1]
    dpart = np.take_along_axis(d2, part, 1)
    srt = np.argsort(dpart, axis=1, kind="stable")
    order = np.take_along_axis(part, srt, 1)
    dd = np.take_along_axis(dpart, srt, 1)
    ok = (np.diff(dd, axis=1) > margin).all(1) & (dd[:, k - 1] < (r + 0.5) ** 2 - margin)
    canon, canon_id = _unique_rows(order[:, :k][ok], n_off)
    cid = np.full(len(x), -1, dtype=np.int64)
    cid[ok] = canon_id.reshape(-1)

    # The 8 symmetries t = sign_u + 2 sign_v + 4 swap, as permutations of the window offsets.
    lookup = {(int(a), int(b)): i for i, (a, b) in enumerate(off)}
    perm = np.empty((8, n_off), dtype=np.int64)
    for t in range(8):
        su, sv, sw = (-1 if t & 1 else 1), (-1 if t & 2 else 1), bool(t & 4)
        for i, (a, b) in enumerate(off):
            ca, cb = (b, a) if sw else (a, b)
            perm[t, i] = lookup[(int(su * ca), int(sv * cb))]
    variants = perm[:, canon].transpose(1, 0, 2).reshape(-1, k)  # (canon pattern, t) -> order
    patterns, final = _unique_rows(variants, n_off)
    final = final.reshape(len(canon), 8)

    iv, jv = np.meshgrid(np.arange(m + 1) - h, np.arange(m + 1) - h, indexing="ij")
    au, av = np.abs(iv), np.abs(jv)
    swap = av > au
    hi, lo = np.maximum(au, av), np.minimum(au, av)
    t = (iv < 0) * 1 + (jv < 0) * 2 + swap * 4
    c = cid[hi * (hi + 1) // 2 + lo]
    vid = np.where(c >= 0, final[np.maximum(c, 0), t], -1)
    c00 = vid[:-1, :-1]
    clean = (c00 >= 0) & (c00 == vid[1:, :-1]) & (c00 == vid[:-1, 1:]) & (c00 == vid[1:, 1:])
    lut = np.where(clean, c00, -1).reshape(-1)
    lut = lut.astype(np.int16 if len(patterns) < 2**15 else np.int32)
    return lut, off[patterns]


@_cached
def _pattern_lut(k: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Torch tables of the pattern fast path: (cell -> pattern id (int16/int32, -1: not accepted),
    pattern offsets as flat grid-table steps int64 patterns x k, the same offsets du, dv in ab
    units float32 patterns x k, valid: bool patterns x table-size, flattened, see below)."""
    lut, offs = _pattern_lut_np(k)
    oi = offs.astype(np.int64)
    delta = oi[..., 0] * _TAB_SIZE + oi[..., 1]  # patterns x k
    # valid[pattern, centre]: all k grid points of the pattern around that centre are bins, i.e. the
    # k nearest grid points are the k nearest bins. Centres too close to the table edge: False.
    tab = _GRID_TABLE_NP
    centres = np.arange(tab.size)
    ci, cj = np.divmod(centres, _TAB_SIZE)
    reach = int(np.abs(oi).max()) if oi.size else 0
    valid = np.broadcast_to(
        (ci >= reach) & (ci < _TAB_SIZE - reach) & (cj >= reach) & (cj < _TAB_SIZE - reach),
        (len(delta), tab.size),
    ).copy()
    for j in range(k):
        valid &= tab[np.clip(centres[None, :] + delta[:, j : j + 1], 0, tab.size - 1)] >= 0
    to = functools.partial(torch.as_tensor, device=device)
    return (
        to(lut),
        to(delta),
        to(offs[..., 0] * GRID, dtype=torch.float32),
        to(offs[..., 1] * GRID, dtype=torch.float32),
        to(valid.reshape(-1)),
    )


def ab_gamut(device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """The 313 bin centres in the authors' order: 313 x 2 (a, b).

    Index 0 is (-90, 50), index 312 is (100, 0). Returns a fresh tensor (safe to modify).
    """
    return torch.as_tensor(_GAMUT_NP, dtype=dtype, device=device).clone()


# ---------------------------------------------------------------------------------------------
# RGB <-> Lab
# ---------------------------------------------------------------------------------------------


def _check_nchw(x: Tensor, channels: int, name: str) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must be N x {channels} x H x W, got {tuple(x.shape)}")


def _lab_f(t: Tensor) -> Tensor:
    """CIE f(t): cube root above the knee, skimage's linear segment below it."""
    # Clamp before the power so the unused branch never sees negatives (no NaN anywhere).
    root = t.clamp_min(_LAB_EPS).pow_(1.0 / 3.0)
    return torch.where(t > _LAB_EPS, root, t.mul(_LAB_KAPPA).add_(_LAB_OFFSET), out=root)


def _lab_f_inv(t: Tensor) -> Tensor:
    return torch.where(t > _LAB_INV_EPS, t.pow(3), (t - _LAB_OFFSET) / _LAB_KAPPA)


def _uint8_xyz(images: Tensor, lut: Tensor) -> Tensor:
    """One of X/Xn, Y/Yn, Z/Zn of uint8 N x 3 x H x W as float32 N x H x W. lut: 3 x 256."""
    n, _, h, w = images.shape
    acc: Tensor | None = None
    for ch in range(3):
        # int32 indices: index_select is much faster with them than with a fresh int64 copy.
        idx = images[:, ch].reshape(-1).to(torch.int32)
        term = torch.index_select(lut[ch], 0, idx)
        acc = term if acc is None else acc.add_(term)
    assert acc is not None
    return acc.view(n, h, w)


def lab_from_uint8(images: Tensor, ab_stride: int = 1) -> tuple[Tensor, Tensor]:
    """Lab of 8-bit sRGB images, with a and b only at every ``ab_stride``-th pixel.

    images: uint8 N x 3 x H x W (sRGB, 0..255).
    Returns (L: float32 N x 1 x H x W in 0..100,
             ab: float32 N x 2 x ceil(H/s) x ceil(W/s), the a, b of pixels [::s, ::s]).

    This is the training hot path: the targets are decimated, so X and Z (and their cube roots)
    are computed only at the kept pixels; L needs Y everywhere. The sRGB linearisation and the
    colour matrix are folded into 256-entry tables (one per input and output channel). L is
    computed in float32 (error ~1e-5), a and b in float64 and then rounded to float32.
    """
    _check_nchw(images, 3, "images")
    if images.dtype != torch.uint8:
        raise TypeError(f"lab_from_uint8 expects uint8 images, got {images.dtype}")
    s = int(ab_stride)
    if s < 1:
        raise ValueError(f"ab_stride must be >= 1, got {ab_stride}")
    n, _, h, w = images.shape
    dev = images.device
    lut32 = _uint8_lut(dev, torch.float32)
    lut64 = _uint8_lut(dev, torch.float64)
    lum = torch.empty(n, 1, h, w, dtype=torch.float32, device=dev)
    ab = torch.empty(n, 2, -(-h // s), -(-w // s), dtype=torch.float32, device=dev)
    # Images in groups of about _CHUNK pixels: the temporaries stay small and get reused, while
    # batch-sized ones would be fresh memory (page faults) on every call.
    g = max(1, _CHUNK // max(1, h * w))
    for n0 in range(0, n, g):
        img = images[n0 : n0 + g]
        fy = _lab_f(_uint8_xyz(img, lut32[1]))
        torch.mul(fy, 116.0, out=lum[n0 : n0 + g, 0]).sub_(16.0)
        # a and b are differences of cube roots scaled by 500 and 200: float32 would lose about
        # 1e-4 there, so the (few) decimated pixels are done in float64, rounded once at the end.
        # This keeps near-ties between bins resolved as skimage's float64 Lab resolves them.
        small = img[:, :, ::s, ::s]
        fx = _lab_f(_uint8_xyz(small, lut64[0]))
        fys = _lab_f(_uint8_xyz(small, lut64[1]))
        fz = _lab_f(_uint8_xyz(small, lut64[2]))
        ab[n0 : n0 + g, 0] = fx.sub_(fys).mul_(500.0)
        ab[n0 : n0 + g, 1] = fz.neg_().add_(fys).mul_(200.0)
    return lum, ab


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB -> CIE Lab (D65, 2 degree observer, skimage's constants).

    rgb: N x 3 x H x W, either uint8 (0..255, table lookups) or floating point sRGB in [0, 1].
    Returns N x 3 x H x W Lab with L in 0..100: float32, except float64 for float64 input (so a
    float64 round trip keeps its precision).
    """
    _check_nchw(rgb, 3, "rgb")
    if rgb.dtype == torch.uint8:
        lum, ab = lab_from_uint8(rgb, 1)
        return torch.cat([lum, ab], 1)
    if not rgb.is_floating_point():
        raise TypeError(f"rgb must be uint8 or floating point, got {rgb.dtype}")
    x = rgb if rgb.dtype == torch.float64 else rgb.float()
    lin = torch.where(x > 0.04045, ((x.clamp_min(0.04045) + 0.055) / 1.055).pow(2.4), x / 12.92)
    m = torch.as_tensor(_XYZN_FROM_RGB, dtype=x.dtype, device=x.device)
    f = _lab_f(torch.einsum("ck,nkhw->nchw", m, lin))
    fx, fy, fz = f.unbind(1)
    return torch.stack([fy * 116.0 - 16.0, (fx - fy) * 500.0, (fy - fz) * 200.0], 1)


def lab_to_rgb(lab: Tensor) -> Tensor:
    """CIE Lab -> sRGB, the inverse of rgb_to_lab (skimage.color.lab2rgb's constants).

    lab: float N x 3 x H x W. Returns N x 3 x H x W sRGB clipped to [0, 1], float32 (float64 for
    float64 input). As in skimage, a negative Z (b too large for the L) is clipped to 0 first.
    """
    _check_nchw(lab, 3, "lab")
    x = lab if lab.dtype == torch.float64 else lab.float()
    lum, a, b = x.unbind(1)
    fy = (lum + 16.0) / 116.0
    fx = a / 500.0 + fy
    fz = (fy - b / 200.0).clamp_min(0.0)
    xyz = _lab_f_inv(torch.stack([fx, fy, fz], 1))
    m = torch.as_tensor(_RGB_FROM_XYZ * _WHITE_D65[None, :], dtype=x.dtype, device=x.device)
    lin = torch.einsum("ck,nkhw->nchw", m, xyz)
    srgb = torch.where(
        lin > 0.0031308, lin.clamp_min(0.0031308).pow(1.0 / 2.4) * 1.055 - 0.055, lin * 12.92
    )
    return srgb.clamp_(0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Soft encoding (exact K nearest bins)
# ---------------------------------------------------------------------------------------------


def _pack(d2: Tensor, tabval: Tensor) -> Tensor:
    """float32 d^2 >= 0 and grid-table values (bin index, or _KEY_OUT) -> int64 sort keys."""
    return (d2.view(torch.int32).to(torch.int64) << _IDX_BITS) | tabval


def _unpack_d2(keys: Tensor) -> Tensor:
    return (keys >> _IDX_BITS).to(torch.int32).view(torch.float32)


def _brute_keys(a: Tensor, b: Tensor, k: int) -> Tensor:
    """Exhaustive search over all 313 centres. a, b: float32 P. Returns int64 keys P x k, sorted."""
    cen = _gamut_const(a.device, torch.float32)
    d2 = (a[:, None] - cen[:, 0]).square_() + (b[:, None] - cen[:, 1]).square_()
    keys = _pack(d2, torch.arange(NUM_BINS, device=a.device))
    return torch.topk(keys, k, dim=1, largest=False, sorted=True).values


def _centre(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Nearest grid point (clamped) of each point: (ci, cj) in grid steps and offset (u, v) in ab.

    nan_to_num keeps NaN input from turning into garbage table indices; such rows, and rows whose
    centre was clamped (far outside the gamut), fail _in_cell and go to the exhaustive search.
    """
    ci = torch.round(a / GRID).nan_to_num_(0.0).clamp_(-_CENTRE_MAX, _CENTRE_MAX)
    cj = torch.round(b / GRID).nan_to_num_(0.0).clamp_(-_CENTRE_MAX, _CENTRE_MAX)
    # Exact in float32 (Sterbenz), and (u - du) then rounds exactly like (a - centre_a): both
    # search paths and the brute force see bit-identical distances.
    return ci, cj, a - ci * GRID, b - cj * GRID


def _cell(u: Tensor, v: Tensor, m: int) -> Tensor:
    qu = ((u + GRID / 2) * (m / GRID)).nan_to_num_(0.0).clamp_(0, m - 1).to(torch.int32)
    qv = ((v + GRID / 2) * (m / GRID)).nan_to_num_(0.0).clamp_(0, m - 1).to(torch.int32)
    return qu.mul_(m).add_(qv)


def _in_cell(u: Tensor, v: Tensor) -> Tensor:
    # The tables' guarantees hold on the closed cell; 1e-4 absorbs float rounding of round(a / 10)
    # and is well inside their margins. Fails for clamped centres and NaN.
    lim = GRID / 2 + 1e-4
    return (u.abs() <= lim) & (v.abs() <= lim)


def _flat_centre(ci: Tensor, cj: Tensor) -> Tensor:
    return ((ci + _TAB_HALF) * _TAB_SIZE + (cj + _TAB_HALF)).to(torch.int64)


def _general_keys(a: Tensor, b: Tensor, k: int) -> Tensor:
    """Exact k nearest bins (sorted packed keys P x k) of points anywhere, float32 a, b of length P.

    Each point gets C = k + 4 candidate grid points from a table indexed by its offset inside its
    grid cell, in the order of the cell centre; a few vectorised odd-even transposition passes
    sort the list for the actual point. The result is accepted only when it is provably the
    answer: the first k are sorted, precede the other candidates, and the k-th is nearer than
    every non-candidate grid point can be (per-cell bound; out-of-gamut grid points sort last, so
    a k-th that is not a bin fails the bound). The rest (rare unfinished sorts, points far
    outside, NaN) goes to the exhaustive search.
    """
    p = a.numel()
    dev = a.device
    if p == 0:
        return torch.empty(0, k, dtype=torch.int64, device=dev)
    if k + 4 > (2 * _WIN_R + 1) ** 2:
        return _brute_keys(a, b, k)
    delta, du, dv, bound_key, c = _general_lut(k, dev)
    ci, cj, u, v = _centre(a, b)
    cell = _cell(u, v, _GENERAL_CELLS)
    pos = torch.index_select(delta, 0, cell).add_(_flat_centre(ci, cj)[:, None])  # P x C
    tabval = torch.index_select(_grid_keytab(dev), 0, pos.view(-1)).view(p, c)
    d2 = (u[:, None] - torch.index_select(du, 0, cell)).square_()
    d2 += (v[:, None] - torch.index_select(dv, 0, cell)).square_()
    keys = _pack(d2, tabval)

    for step in range(_N_PASSES):
        s = step % 2
        n_pairs = (c - s) // 2
        if n_pairs == 0:
            continue
        sub = keys[:, s : s + 2 * n_pairs].view(p, n_pairs, 2)
        lo = torch.minimum(sub[..., 0], sub[..., 1])
        hi = torch.maximum(sub[..., 0], sub[..., 1])
        sub[..., 0] = lo
        sub[..., 1] = hi

    kth = keys[:, k - 1]
    ok = kth < torch.index_select(bound_key, 0, cell)
    for j in range(k - 1):
        ok &= keys[:, j] < keys[:, j + 1]
    for j in range(k, c):
        ok &= kth < keys[:, j]
    ok &= _in_cell(u, v)

    out = keys[:, :k].contiguous()
    bad = (~ok).nonzero().squeeze(1)
    if bad.numel() > 0:
        out[bad] = _brute_keys(a[bad], b[bad], k)
    return out


def _knn(a: Tensor, b: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact k nearest bins of float32 points (a, b) of length P: (bins int64 P x k, d^2 float32).

    Sorted by distance, exact ties by lower bin index. Fast path: a point whose centre is deep in
    the gamut and whose offset falls in a cell with a fixed order (see _pattern_lut_np) reads its
    k bins off a table: no per-row sort at all, which is what makes the naive method slow on a
    CPU. Other points (near the gamut border, or offsets near a change of order) take the general
    local search.
    """
    p = a.numel()
    dev = a.device
    if k > _PATTERN_MAX_K or p == 0:
        keys = _general_keys(a, b, k)
        return keys & _IDX_MASK, _unpack_d2(keys)
    lut, pdelta, pdu, pdv, valid = _pattern_lut(k, dev)
    ci, cj, u, v = _centre(a, b)
    centre = _flat_centre(ci, cj)
    pat = torch.index_select(lut, 0, _cell(u, v, _PATTERN_CELLS))
    fast = pat >= 0
    patc = pat.clamp_(min=0).to(torch.int64)
    fast &= torch.index_select(valid, 0, patc * (_TAB_SIZE * _TAB_SIZE) + centre)
    fast &= _in_cell(u, v)
    pos = torch.index_select(pdelta, 0, patc).add_(centre[:, None])
    idx = torch.index_select(_grid_table(dev), 0, pos.view(-1)).view(p, k)
    d2 = (u[:, None] - torch.index_select(pdu, 0, patc)).square_()
    d2 += (v[:, None] - torch.index_select(pdv, 0, patc)).square_()
    slow = (~fast).nonzero().squeeze(1)
    if slow.numel() > 0:
        keys = _general_keys(a[slow], b[slow], k)
        idx[slow] = keys & _IDX_MASK
        d2[slow] = _unpack_d2(keys)
    return idx, d2


def _blocks(n: int, hw: int) -> list[tuple[int, int, int, int]]:
    """(n0, n1, p0, p1) blocks of about _CHUNK pixels: whole images, or pixel ranges of one image."""
    if hw == 0 or n == 0:
        return []
    if hw <= _CHUNK:
        g = _CHUNK // hw
        return [(i, min(i + g, n), 0, hw) for i in range(0, n, g)]
    return [(i, i + 1, j, min(j + _CHUNK, hw)) for i in range(n) for j in range(0, hw, _CHUNK)]


def _check_ab(ab: Tensor) -> None:
    _check_nchw(ab, 2, "ab")
    if not ab.is_floating_point():
        raise TypeError(f"ab must be floating point, got {ab.dtype}")


def soft_encode(ab: Tensor, neighbors: int = 10, sigma: float = 5.0) -> tuple[Tensor, Tensor]:
    """Soft-encode ab values over their K nearest bins (exact, no rounding of ab).

    ab: float N x 2 x H x W (any values; far outside the gamut is fine).
    Returns (indices: int64 N x K x H x W, bins sorted by increasing distance, ties by lower index;
             weights: N x K x H x W, exp(-d^2 / (2 sigma^2)) normalised to sum 1 over K;
             float32, or float64 for float64 ab).
    The search runs on float32 values (float64 ab: distances of the chosen bins are recomputed in
    float64 for the weights).
    """
    _check_ab(ab)
    k = int(neighbors)
    if not 1 <= k <= NUM_BINS:
        raise ValueError(f"neighbors must be in 1..{NUM_BINS}, got {neighbors}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    n, _, h, w = ab.shape
    hw = h * w
    wdtype = torch.float64 if ab.dtype == torch.float64 else torch.float32
    indices = torch.empty(n, k, hw, dtype=torch.int64, device=ab.device)
    weights = torch.empty(n, k, hw, dtype=wdtype, device=ab.device)
    planes = ab.reshape(n, 2, hw)
    scale = -0.5 / (sigma * sigma)
    for n0, n1, p0, p1 in _blocks(n, hw):
        blk = planes[n0:n1, :, p0:p1]
        a = blk[:, 0].reshape(-1).to(torch.float32)
        b = blk[:, 1].reshape(-1).to(torch.float32)
        idx, d2 = _knn(a, b, k)
        if wdtype == torch.float64:
            cen = _gamut_const(ab.device, torch.float64)
            a64 = blk[:, 0].reshape(-1, 1)
            b64 = blk[:, 1].reshape(-1, 1)
            d2 = (a64 - cen[:, 0][idx]).square_() + (b64 - cen[:, 1][idx]).square_()
        # Subtracting the nearest distance leaves the normalised weights unchanged and keeps far
        # out-of-gamut points from underflowing to 0 / 0.
        wts = d2.sub_(d2[:, :1].clone()).mul_(scale).exp_()
        wts /= wts.sum(1, keepdim=True)
        shape = (n1 - n0, p1 - p0, k)
        indices[n0:n1, :, p0:p1] = idx.view(shape).permute(0, 2, 1)
        weights[n0:n1, :, p0:p1] = wts.view(shape).permute(0, 2, 1)
    return indices.view(n, k, h, w), weights.view(n, k, h, w)


def dense_soft_encoding(indices: Tensor, weights: Tensor, num_bins: int = NUM_BINS) -> Tensor:
    """Scatter a sparse soft encoding into the dense form.

    indices: int64 N x K x H x W, weights: N x K x H x W -> N x num_bins x H x W (weights' dtype).
    """
    if indices.shape != weights.shape or indices.dim() != 4:
        raise ValueError(f"indices and weights must both be N x K x H x W, got "
                         f"{tuple(indices.shape)} and {tuple(weights.shape)}")
    n, _, h, w = indices.shape
    out = torch.zeros(n, num_bins, h, w, dtype=weights.dtype, device=weights.device)
    return out.scatter_add_(1, indices, weights)


def nearest_bin(ab: Tensor) -> Tensor:
    """Index of the nearest bin centre: float N x 2 x H x W -> int64 N x H x W.

    Equal to soft_encode(ab)[0][:, 0] (same search, same tie rule).
    """
    _check_ab(ab)
    n, _, h, w = ab.shape
    hw = h * w
    out = torch.empty(n, hw, dtype=torch.int64, device=ab.device)
    planes = ab.reshape(n, 2, hw)
    for n0, n1, p0, p1 in _blocks(n, hw):
        blk = planes[n0:n1, :, p0:p1]
        idx, _ = _knn(blk[:, 0].reshape(-1).to(torch.float32), blk[:, 1].reshape(-1).to(torch.float32), 1)
        out[n0:n1, p0:p1] = idx.view(n1 - n0, p1 - p0)
    return out.view(n, h, w)


def bin_histogram(ab: Tensor) -> Tensor:
    """Counts of nearest bins over all pixels of ab (N x 2 x H x W): float64 tensor of 313."""
    return torch.bincount(nearest_bin(ab).reshape(-1), minlength=NUM_BINS).to(torch.float64)


# ---------------------------------------------------------------------------------------------
# Class rebalancing
# ---------------------------------------------------------------------------------------------


def smooth_prior(p: Tensor, sigma: float = 5.0) -> Tensor:
    """Mass-preserving Gaussian smoothing of a distribution over the 313 bins in ab space.

    p: 313 (probabilities or counts). Returns 313 in p's dtype (float32 for integer input):
    p'_q = sum_r p_r G(c_q - c_r) / Z_r, Z_r = sum_q G(c_q - c_r), G a Gaussian of std sigma;
    p is normalised first, so the result sums to 1. sigma = 0 returns the normalised p.
    """
    if p.shape != (NUM_BINS,):
        raise ValueError(f"p must have shape ({NUM_BINS},), got {tuple(p.shape)}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    out_dtype = p.dtype if p.is_floating_point() else torch.float32
    q = p.to(torch.float64)
    total = q.sum()
    if not total > 0:
        raise ValueError("p must have positive total mass")
    q = q / total
    if sigma == 0:
        return q.to(out_dtype)
    cen = _gamut_const(p.device, torch.float64)
    g = torch.exp(torch.cdist(cen, cen).square() * (-0.5 / (sigma * sigma)))  # symmetric
    # Dividing by Z_r spreads each bin's mass without losing what would fall outside the gamut.
    smoothed = g @ (q / g.sum(0))
    return (smoothed / smoothed.sum()).to(out_dtype)


def _load_prior(path: Path, sigma: float | None) -> Tensor:
    if path.suffix == ".npy":
        return torch.as_tensor(np.load(path)).to(torch.float32)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        stored = obj.get("sigma")
        if stored != sigma:
            raise ValueError(f"prior cache {path} was computed with sigma={stored}, asked sigma={sigma}")
        obj = obj["prior"]
    return torch.as_tensor(obj).to(torch.float32)


def _save_atomic(path: Path, prior: Tensor, sigma: float | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory so os.replace is a rename on one filesystem: readers see old or new, never half.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if path.suffix == ".npy":
                np.save(fh, prior.numpy())
            else:
                torch.save({"prior": prior, "sigma": sigma}, fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def empirical_prior(
    ab_batches: Iterable[Tensor],
    sigma: float | None = 5.0,
    cache_file: str | Path | None = None,
) -> Tensor:
    """Distribution of nearest bins over every pixel of every batch (each N x 2 x H x W).

    Returns float32 CPU tensor of 313 summing to 1, smoothed by smooth_prior(sigma) unless sigma is
    None. With cache_file: if it exists it is loaded and ab_batches is not touched; otherwise the
    prior is computed and written atomically (temp file in the same directory, then os.replace).
    A ".npy" cache holds the bare array (like the authors' prior_probs.npy); any other suffix holds
    a torch file that also records sigma, checked on load. The caller puts the data fingerprint
    into the file name.
    """
    path = Path(cache_file) if cache_file is not None else None
    if path is not None and path.exists():
        return _load_prior(path, sigma)
    counts = torch.zeros(NUM_BINS, dtype=torch.float64)
    for ab in ab_batches:
        counts += bin_histogram(ab).cpu()
    if not counts.sum() > 0:
        raise ValueError("empirical_prior: no pixels in ab_batches")
    prior = counts / counts.sum() if sigma is None else smooth_prior(counts, sigma)
    prior = prior.to(torch.float32)
    if path is not None:
        _save_atomic(path, prior, sigma)
    return prior


def rebalance_weights(prior: Tensor, lam: float = 0.5) -> Tensor:
    """Class-rebalancing weights: w_q proportional to ((1 - lam) p_q + lam / Q)^-1, sum_q p_q w_q = 1.

    prior: 313 probabilities (summing to 1). Returns 313 in prior's dtype. lam = 1 gives w = 1
    (no rebalancing); lam = 0 gives 1 / p (inf on empty bins, which then carry no mass).
    """
    if prior.shape != (NUM_BINS,):
        raise ValueError(f"prior must have shape ({NUM_BINS},), got {tuple(prior.shape)}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    p = prior.to(torch.float64)
    w = 1.0 / ((1.0 - lam) * p + lam / NUM_BINS)
    # Empty bins contribute nothing to the expectation (avoids 0 * inf when lam = 0).
    norm = torch.where(p > 0, p * w, torch.zeros_like(p)).sum()
    return (w / norm).to(prior.dtype if prior.is_floating_point() else torch.float32)


def pixel_weights(
    ab: Tensor, nearest: Tensor, weights: Tensor, grey_threshold: float = 5.0
) -> Tensor:
    """Per-pixel loss weights: the class weight of each pixel's nearest bin, 0 for grey images.

    ab: N x 2 x H x W (the target-resolution ab), nearest: int64 N x H x W, weights: 313.
    Returns N x H x W in weights' dtype. An image counts as grey when every pixel of its ab map has
    |a| <= grey_threshold and |b| <= grey_threshold (its colour targets carry no information).
    """
    _check_nchw(ab, 2, "ab")
    w = torch.index_select(weights.to(ab.device), 0, nearest.reshape(-1)).view(nearest.shape)
    colourful = (ab.abs() > grey_threshold).flatten(1).any(1)
    return w * colourful.to(w.dtype)[:, None, None]


# ---------------------------------------------------------------------------------------------
# Decoding a predicted distribution into ab
# ---------------------------------------------------------------------------------------------


def annealed_mean(logits: Tensor, T: float = 0.38) -> Tensor:
    """Annealed mean of the predicted bin distribution: N x 313 x H x W logits -> N x 2 x H x W ab.

    f_T(z) = softmax(log z / T) of z = softmax(logits) is softmax(logits / T), whose expectation
    over the bin centres is returned. T = 1 is the mean, T -> 0 the mode.
    """
    if T <= 0:
        raise ValueError(f"T must be > 0, got {T}")
    _check_nchw(logits, NUM_BINS, "logits")
    prob = torch.softmax(logits / T, dim=1)
    cen = _gamut_const(logits.device, prob.dtype)
    return torch.einsum("nqhw,qc->nchw", prob, cen)


def decode_mean(logits: Tensor) -> Tensor:
    """Mean of the predicted distribution (annealed mean with T = 1): N x 2 x H x W."""
    return annealed_mean(logits, 1.0)


def decode_mode(logits: Tensor) -> Tensor:
    """Centre of the most probable bin: N x 313 x H x W logits -> N x 2 x H x W ab."""
    _check_nchw(logits, NUM_BINS, "logits")
    dtype = logits.dtype if logits.is_floating_point() else torch.float32
    cen = _gamut_const(logits.device, dtype)
    return cen[logits.argmax(1)].permute(0, 3, 1, 2).contiguous()


_DECODERS = ("annealed_mean", "mean", "mode")


def decode(logits: Tensor, method: str = "annealed_mean", T: float = 0.38) -> Tensor:
    """Decode logits into ab with one of "annealed_mean" (uses T), "mean", "mode"."""
    if method == "annealed_mean":
        return annealed_mean(logits, T)
    if method == "mean":
        return decode_mean(logits)
    if method == "mode":
        return decode_mode(logits)
    raise ValueError(f"unknown decode method {method!r}; valid choices: {', '.join(_DECODERS)}")
