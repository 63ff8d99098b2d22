"""Colour space and target encoding for colorization (Zhang, Isola, Efros, ECCV 2016).

Everything here is a pure function on tensors laid out as N x C x H x W. Constants are built on
the device of the input (and cached per device and dtype), so the same code runs on CPU or GPU.

Conventions (reference: docs/protocols.md §1.1-1.5):

* Lab is CIE Lab with a D65 white and the 2 degree observer, with exactly the constants of
  ``skimage.color.rgb2lab`` (sRGB matrix, ``0.008856`` / ``7.787`` linear segment), so results
  can be compared with the authors' pipeline, which used scikit-image.
* The 313 ab bins are the authors' table (a ascending, then b ascending), on a grid of step 10.
* Soft encoding: the K nearest bin centres of every ab value, Gaussian weights with sigma = 5,
  normalised to sum to 1. Exact (not a quantised lookup), with exact ties broken by the lower
  bin index in every code path.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from ssl_bench.io import atomic_writer

__all__ = [
    "NUM_BINS",
    "GRID",
    "rgb_to_lab",
    "lab_to_rgb",
    "lab_from_uint8",
    "l_from_uint8",
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
# Colour space constants (identical to skimage.color.colorconv so results are comparable)
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
# Folding the white point into the matrix saves a division per pixel and channel.
_XYZN_FROM_RGB = _XYZ_FROM_RGB / _WHITE_D65[:, None]

_LAB_EPS = 0.008856  # knee of f(t), as in skimage
_LAB_KAPPA = 7.787
_LAB_OFFSET = 16.0 / 116.0
_LAB_INV_EPS = 0.2068966  # f(_LAB_EPS), the knee used by skimage's inverse

_L_STEPS = 1 << 16  # nodes per unit Y of the L(Y) interpolation table for 8-bit input


def _srgb_to_linear_np(v: np.ndarray) -> np.ndarray:
    return np.where(v > 0.04045, ((v + 0.055) / 1.055) ** 2.4, v / 12.92)


def _lab_f_np(t: np.ndarray) -> np.ndarray:
    return np.where(t > _LAB_EPS, np.cbrt(t), _LAB_KAPPA * t + _LAB_OFFSET)


def _uint8_lin_np() -> np.ndarray:
    """Linear-light value of each 8-bit sRGB code (256,)."""
    return _srgb_to_linear_np(np.arange(256, dtype=np.float64) / 255.0)


def _uint8_y_lut_np() -> np.ndarray:
    """3 x 256: contribution of each 8-bit R, G, B code to Y/Yn (sRGB decoding folded in)."""
    return _XYZN_FROM_RGB[1][:, None] * _uint8_lin_np()[None, :]


def _l_table_np() -> tuple[np.ndarray, np.ndarray]:
    """L(Y) at Y = j / _L_STEPS (j = 0 .. _L_STEPS) and the step to the next node.

    Linear interpolation on this grid is within 2e-6 of skimage's L for Y in [0, 1] (the
    curvature peaks at the knee, |L''| ~ 7e4, and h^2 / 8 ~ 3e-11), except in the one interval
    holding the knee, where skimage's own L jumps by 4e-5 and the error is up to 2.5e-5. It
    replaces a cube root per full-resolution pixel.
    """
    y = np.arange(_L_STEPS + 2, dtype=np.float64) / _L_STEPS
    lum = 116.0 * _lab_f_np(y) - 16.0
    return lum[:-1], np.diff(lum)


# ---------------------------------------------------------------------------------------------
# The 313 bins and the grid tables for the nearest-bin search
# ---------------------------------------------------------------------------------------------

# (a, b_min, b_max) from docs/protocols.md §1.2; the authors' bins, not a quantised sRGB gamut.
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

# Grid table: grid point (a/10, b/10) for a, b in [-_TAB_HALF, _TAB_HALF] grid steps, flattened.
# Centres are clamped to +-_CENTRE_MAX steps and candidates lie within _WIN_R steps of their
# centre, so every lookup stays inside the table.
_WIN_R = 5  # general search: candidates come from an 11 x 11 window of grid points
_CENTRE_MAX = 20  # centres clamped to +-200 in ab; such points go to the exhaustive search
_TAB_HALF = _CENTRE_MAX + _WIN_R
_TAB_SIZE = 2 * _TAB_HALF + 1
_BIN_FLAT_NP = (np.rint(_GAMUT_NP / GRID).astype(np.int64) + _TAB_HALF) @ np.array([_TAB_SIZE, 1])


def _grid_table_np() -> np.ndarray:
    """Flattened _TAB_SIZE^2 table: bin index of each grid point, -1 outside the gamut."""
    tab = np.full(_TAB_SIZE * _TAB_SIZE, -1, dtype=np.int64)
    tab[_BIN_FLAT_NP] = np.arange(NUM_BINS)
    return tab


_GRID_TABLE_NP = _grid_table_np()

# Packed sort keys: (float32 bit pattern of d^2) << 9 | bin index. Bit patterns of non-negative
# floats order like the floats, so one int64 comparison orders by distance and breaks exact ties
# by the lower bin index: unique keys make every path deterministic and mutually consistent.
_IDX_BITS = 9
_IDX_MASK = (1 << _IDX_BITS) - 1
# Grid points outside the gamut get a bit above any packed distance: they sort after all bins.
_KEY_OUT = (1 << 41) | _IDX_MASK
_GRID_KEYTAB_NP = np.where(_GRID_TABLE_NP >= 0, _GRID_TABLE_NP, _KEY_OUT)

_GENERAL_CELLS = 64  # cells per axis of the general search's candidate table
_N_PASSES = 3  # odd-even transposition passes of the general search
_PATTERN_CELLS = 2048  # cells per axis of the pattern table (even)
_PATTERN_MAX_K = 13  # above: many more patterns, slower table build; general search only
_LAB_CHUNK = 1 << 17  # full-resolution pixels per step of lab_from_uint8
_KNN_CHUNK = 1 << 16  # points per step of the nearest-bin search
_BRUTE_CHUNK = 1 << 12  # points per step of the exhaustive search (x 313 candidates)
# Why chunks: chunk-sized temporaries stay in cache and are recycled by the allocator, while
# batch-sized ones stream through main memory (and can be fresh memory to page in on every call).


def _cached(fn):
    """lru_cache keyed on hashable args (ints, device, dtype): tables are built once per device."""
    return functools.lru_cache(maxsize=None)(fn)


@_cached
def _gamut_const(device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.as_tensor(_GAMUT_NP, dtype=dtype, device=device)


@_cached
def _centre_table(device: torch.device) -> Tensor:
    """The grid table with "not a bin" as 313 instead of -1 (see _pattern_tables)."""
    return torch.as_tensor(np.where(_GRID_TABLE_NP >= 0, _GRID_TABLE_NP, NUM_BINS), device=device)


@_cached
def _grid_keytab(device: torch.device) -> Tensor:
    return torch.as_tensor(_GRID_KEYTAB_NP, device=device)


@_cached
def _uint8_tables(device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(Y/Yn contributions float32 3 x 256, pre-scaled by _L_STEPS so their sum is the position
    in the L table; L table: (base, step) float32 pairs packed in int64 words, so one gather
    fetches both; linear-light float64 256; colour matrix with the white folded in, float64)."""
    base, step = _l_table_np()
    packed = np.ascontiguousarray(np.stack([base, step], 1).astype(np.float32)).view(np.int64)
    to = functools.partial(torch.as_tensor, device=device)
    return (
        to(_uint8_y_lut_np() * _L_STEPS, dtype=torch.float32),
        to(packed.reshape(-1)),
        to(_uint8_lin_np(), dtype=torch.float64),
        to(_XYZN_FROM_RGB, dtype=torch.float64),
    )


def ab_gamut(
    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
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


def _cbrt64(t: Tensor) -> Tensor:
    """Cube root of float64 t >= _LAB_EPS: float32 root plus one Newton step (relative error
    ~1e-14), cheaper than a float64 pow."""
    y = t.to(torch.float32).pow_(1.0 / 3.0).to(torch.float64)
    y2 = y * y
    return y.sub_(y2.mul(y).sub_(t).div_(y2.mul_(3.0)))


def _uint8_ab(images: Tensor, lin: Tensor, xyzn: Tensor) -> Tensor:
    """a, b of uint8 N x 3 x h x w (any strides) as float32 N x 2 x h x w.

    a and b are differences of cube roots scaled by 500 and 200: in float32 they would be off by
    up to ~1e-4, enough to flip near-ties between bins, so they are done in float64 (they are
    only needed at the decimated target pixels) and rounded once at the end.
    """
    n, _, h, w = images.shape
    idx = images.transpose(0, 1).to(torch.int32, memory_format=torch.contiguous_format)
    xyz = xyzn @ torch.index_select(lin, 0, idx.view(-1)).view(3, -1)  # 3 x P
    root = _cbrt64(xyz.clamp_min(_LAB_EPS))
    f = torch.where(xyz > _LAB_EPS, root, xyz.mul_(_LAB_KAPPA).add_(_LAB_OFFSET), out=root)
    ab = torch.empty(2, n, h, w, dtype=torch.float32, device=images.device)
    torch.sub(f[0], f[1], out=f[0]).mul_(500.0)
    torch.sub(f[1], f[2], out=f[2]).mul_(200.0)
    ab[0] = f[0].view(n, h, w)
    ab[1] = f[2].view(n, h, w)
    return ab.transpose(0, 1)


def _check_uint8(images: Tensor) -> None:
    _check_nchw(images, 3, "images")
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")


def l_from_uint8(images: Tensor) -> Tensor:
    """L channel of 8-bit sRGB images: uint8 N x 3 x H x W -> float32 N x 1 x H x W in 0..100.

    The L of lab_from_uint8, without its a and b: for callers that only need the network input.
    Y is a sum of three 256-entry table lookups (sRGB decoding and the colour matrix folded in)
    and L(Y) is read off a fine interpolation table (within 3e-5 of the formula, see
    _l_table_np) instead of taking a cube root per pixel.
    """
    _check_uint8(images)
    n, _, h, w = images.shape
    ylut, ltab, _, _ = _uint8_tables(images.device)
    lum = torch.empty(n, 1, h, w, dtype=torch.float32, device=images.device)
    g = max(1, _LAB_CHUNK // max(1, h * w))
    for n0 in range(0, n, g):
        img = images[n0 : n0 + g]
        y = None
        for ch in range(3):
            # int32 indices: index_select is much faster with them than with an int64 copy.
            codes = img[:, ch].to(torch.int32, memory_format=torch.contiguous_format)
            term = torch.index_select(ylut[ch], 0, codes.view(-1))
            y = term if y is None else y.add_(term)
        assert y is not None
        node = y.to(torch.int32)  # y = Y * _L_STEPS with Y <= 1: within the table
        frac = y.sub_(node)
        nodes = torch.index_select(ltab, 0, node).view(torch.float32).view(-1, 2)
        torch.addcmul(nodes[:, 0], nodes[:, 1], frac, out=lum[n0 : n0 + g].view(-1))
    return lum


def lab_from_uint8(images: Tensor, ab_stride: int = 1) -> tuple[Tensor, Tensor]:
    """Lab of 8-bit sRGB images, with a and b only at every ``ab_stride``-th pixel.

    images: uint8 N x 3 x H x W (sRGB, 0..255).
    Returns (L: float32 N x 1 x H x W in 0..100, as l_from_uint8,
             ab: float32 N x 2 x ceil(H/s) x ceil(W/s), the a, b of pixels [::s, ::s]).

    This is the training hot path: L is needed at every pixel, the targets only at the decimated
    ones, so X and Z, and a and b, are computed only there; in float64, then rounded to float32
    (within 4e-6 of skimage over all 2^24 colours).
    """
    _check_uint8(images)
    s = int(ab_stride)
    if s < 1:
        raise ValueError(f"ab_stride must be >= 1, got {ab_stride}")
    _, _, lin, xyzn = _uint8_tables(images.device)
    ab = _uint8_ab(images[:, :, ::s, ::s], lin, xyzn).contiguous()
    return l_from_uint8(images), ab


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB -> CIE Lab (D65, 2 degree observer, skimage's constants).

    rgb: N x 3 x H x W, either uint8 (0..255; table lookups, see lab_from_uint8) or floating
    point sRGB in [0, 1]. Returns N x 3 x H x W Lab with L in 0..100: float32, except float64 for
    float64 input (so a float64 round trip keeps its precision).
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
# Exact K nearest bins
#
# A point's nearest grid point ("centre") is round(ab / 10); its offset from it, (u, v), lies in
# [-5, 5]^2. Three searches, all exact, each taking what the previous one cannot prove:
#   * pattern path (most points): the K nearest grid points, in order, depend only on (u, v), and
#     are constant on most cells of a fine grid over the offset square. Such a cell stores a
#     pattern id; if the K points of that pattern around the centre are all bins, they are the
#     answer. No sorting at all, which is what makes the naive method slow on a CPU.
#   * general path (offsets near a change of order, points near the gamut border or outside):
#     a short candidate list, a few vectorised sorting passes, and a proof-or-fallback check.
#   * exhaustive search over all 313 bins for whatever the general path cannot prove.
# ---------------------------------------------------------------------------------------------


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


def _pattern_lut_np(
    k: int, m: int = _PATTERN_CELLS, margin: float = 1e-4
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
    r = _pattern_radius(k)
    off = _window(r)
    n_off = len(off)
    h = m // 2
    # Canonical vertices p >= q >= 0 (in 1/m): row of (p, q) is p (p + 1) / 2 + q.
    cp, cq = np.tril_indices(h + 1)
    d2 = (cp[:, None] / m - off[:, 0]) ** 2 + (cq[:, None] / m - off[:, 1]) ** 2
    part = np.argpartition(d2, k, axis=1)[:, : k + 1]
    dpart = np.take_along_axis(d2, part, 1)
    srt = np.argsort(dpart, axis=1, kind="stable")
    order = np.take_along_axis(part, srt, 1)
    dd = np.take_along_axis(dpart, srt, 1)
    ok = (np.diff(dd, axis=1) > margin).all(1) & (dd[:, k - 1] < (r + 0.5) ** 2 - margin)
    canon, canon_id = _unique_rows(order[:, :k][ok], n_off)
    cid = np.full(len(cp), -1, dtype=np.int32)
    cid[ok] = canon_id

    # The 8 symmetries t = [u negated] + 2 [v negated] + 4 [swapped], as permutations of offsets.
    lookup = {(int(a), int(b)): i for i, (a, b) in enumerate(off)}
    perm = np.empty((8, n_off), dtype=np.int64)
    for t in range(8):
        su, sv, sw = (-1 if t & 1 else 1), (-1 if t & 2 else 1), bool(t & 4)
        for i, (a, b) in enumerate(off):
            ca, cb = (b, a) if sw else (a, b)
            perm[t, i] = lookup[(int(su * ca), int(sv * cb))]
    variants = perm[:, canon].transpose(1, 0, 2).reshape(-1, k)  # row: canon pattern * 8 + t
    patterns, final = _unique_rows(variants, n_off)
    final = final.reshape(len(canon), 8)

    iv = np.arange(m + 1, dtype=np.int32) - h
    au, av = np.abs(iv)[:, None], np.abs(iv)[None, :]
    hi, lo = np.maximum(au, av), np.minimum(au, av)
    t = ((iv < 0)[:, None] * 1 + (iv < 0)[None, :] * 2 + (av > au) * 4).astype(np.int32)
    c = cid[hi * (hi + 1) // 2 + lo]
    final = np.concatenate([final.astype(np.int32), np.full((1, 8), -1, dtype=np.int32)])
    vid = final[c, t]  # c = -1 picks the appended row of -1
    c00 = vid[:-1, :-1]
    clean = (c00 >= 0) & (c00 == vid[1:, :-1]) & (c00 == vid[:-1, 1:]) & (c00 == vid[1:, 1:])
    assert len(patterns) < 2**15
    return np.where(clean, c00, -1).reshape(-1).astype(np.int16), off[patterns]


@_cached
def _pattern_tables(k: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
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
    delta = oi[..., 0] * _TAB_SIZE + oi[..., 1]  # patterns x k, steps in the flat grid table
    grid = np.full((n_pat + 1, NUM_BINS + 1, k), -1, dtype=np.int64)
    grid[:n_pat, :NUM_BINS] = _GRID_TABLE_NP[_BIN_FLAT_NP[None, :, None] + delta[:, None, :]]
    offs = np.concatenate([offs, np.zeros((1, k, 2))]) * GRID
    to = functools.partial(torch.as_tensor, device=device)
    return (
        to(np.where(lut >= 0, lut, n_pat).astype(np.int16)),
        to(np.ascontiguousarray(np.maximum(grid, 0).reshape(-1, k).T).astype(np.int16)),
        to((grid >= 0).all(-1).reshape(-1)),
        to(np.ascontiguousarray(offs[..., 0].T), dtype=torch.float32),
        to(np.ascontiguousarray(offs[..., 1].T), dtype=torch.float32),
    )


@_cached
def _general_tables(k: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Tables of the general search, per cell of the offset square (_GENERAL_CELLS per axis):
      delta  int64 cells x C: candidate grid points (C = k + 4) as steps in the flat grid table,
             ordered by distance from the cell centre, so a few sorting passes finish the job;
      du, dv float32 cells x C: the same offsets in ab units;
      bound  int64 cells: packed key of a lower bound on d^2 from ANY point of the closed cell to
             every grid point that is not a candidate. If a point's k-th candidate is nearer than
             that, no other grid point (hence no other bin) can be among its k nearest.
    """
    m = _GENERAL_CELLS
    c = k + 4
    off = _window(_WIN_R)
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
    # Grid points outside the window are at least _WIN_R + 1/2 steps away.
    bound = np.minimum(bound, (_WIN_R + 0.5) ** 2) * GRID**2
    # Margin for float32 rounding of the run-time distances (ties that close are ambiguous anyway).
    bound = (bound * (1.0 - 1e-5)).astype(np.float32)
    oi = off[cand].astype(np.int64)
    to = functools.partial(torch.as_tensor, device=device)
    return (
        to(oi[..., 0] * _TAB_SIZE + oi[..., 1]),
        to(off[cand][..., 0] * GRID, dtype=torch.float32),
        to(off[cand][..., 1] * GRID, dtype=torch.float32),
        to(bound.view(np.int32).astype(np.int64) << _IDX_BITS),
        c,
    )


def _pack(d2: Tensor, tabval: Tensor) -> Tensor:
    """float32 d^2 >= 0 and grid-table values (bin index, or _KEY_OUT) -> int64 sort keys."""
    return (d2.view(torch.int32).to(torch.int64) << _IDX_BITS) | tabval


def _unpack_d2(keys: Tensor) -> Tensor:
    return (keys >> _IDX_BITS).to(torch.int32).view(torch.float32)


def _centre(x: Tensor) -> tuple[Tensor, Tensor]:
    """x: float32 2 x P (a; b). Returns the nearest grid point c (2 x P, grid steps) and the
    offset uv = x - 10 c (2 x P, ab units).

    Centres are clamped to +-_CENTRE_MAX steps, and NaN is sent there too: such a centre is far
    from every bin, so the table paths reject the point and the exhaustive search takes it.
    uv is exact in float32 (Sterbenz), so (uv - du) rounds exactly as (x - bin centre) does:
    every search path and the exhaustive one see bit-identical distances.
    """
    c = torch.round(x * (1.0 / GRID)).nan_to_num_(_CENTRE_MAX).clamp_(-_CENTRE_MAX, _CENTRE_MAX)
    return c, torch.sub(x, c, alpha=GRID)


def _cell(uv: Tensor, m: int) -> Tensor:
    """Cell (of m x m over the offset square) of each offset: int32 P."""
    q = torch.add(uv, GRID / 2).mul_(m / GRID).nan_to_num_(0.0).clamp_(0, m - 1).to(torch.int32)
    return q[0].mul(m).add_(q[1])


def _flat_centre(c: Tensor) -> Tensor:
    return c[0].mul(_TAB_SIZE).add_(c[1]).add_(_TAB_HALF * (_TAB_SIZE + 1)).to(torch.int64)


def _sq_dist(du: Tensor, dv: Tensor, uv: Tensor, dim: int) -> Tensor:
    """Squared distances from offsets uv (2 x P) to candidate offsets du, dv (P x C if dim is 1,
    C x P if dim is 0), in place on du."""
    return du.sub_(uv[0].unsqueeze(dim)).square_().add_(dv.sub_(uv[1].unsqueeze(dim)).square_())


def _brute_keys(x: Tensor, k: int) -> Tensor:
    """Exhaustive search over all 313 centres. x: float32 2 x P. Returns keys P x k, sorted."""
    cen = _gamut_const(x.device, torch.float32)
    ids = torch.arange(NUM_BINS, device=x.device)
    out = torch.empty(x.shape[1], k, dtype=torch.int64, device=x.device)
    for s in range(0, x.shape[1], _BRUTE_CHUNK):
        a, b = x[0, s : s + _BRUTE_CHUNK, None], x[1, s : s + _BRUTE_CHUNK, None]
        d2 = (a - cen[:, 0]).square_() + (b - cen[:, 1]).square_()
        out[s : s + _BRUTE_CHUNK] = torch.topk(_pack(d2, ids), k, dim=1, largest=False).values
    return out


def _general_keys(x: Tensor, k: int) -> Tensor:
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
    if p == 0 or k + 4 > (2 * _WIN_R + 1) ** 2:
        return _brute_keys(x, k)
    delta, du, dv, bound, c = _general_tables(k, x.device)
    centre, uv = _centre(x)
    cell = _cell(uv, _GENERAL_CELLS)
    pos = torch.index_select(delta, 0, cell).add_(_flat_centre(centre)[:, None])
    tabval = torch.index_select(_grid_keytab(x.device), 0, pos.view(-1)).view(p, c)
    d2 = _sq_dist(torch.index_select(du, 0, cell), torch.index_select(dv, 0, cell), uv, 1)
    keys = _pack(d2, tabval)
    for step in range(_N_PASSES):
        s = step % 2
        n_pairs = (c - s) // 2
        pair = keys[:, s : s + 2 * n_pairs].view(p, n_pairs, 2)
        lo = torch.minimum(pair[..., 0], pair[..., 1])
        pair[..., 1] = torch.maximum(pair[..., 0], pair[..., 1])
        pair[..., 0] = lo
    kth = keys[:, k - 1]
    ok = kth < torch.index_select(bound, 0, cell)
    ok &= (keys[:, : k - 1] < keys[:, 1:k]).all(1)
    ok &= (keys[:, k:] > kth[:, None]).all(1)
    out = keys[:, :k].contiguous()
    bad = (~ok).nonzero().squeeze(1)
    if bad.numel() > 0:
        out[bad] = _brute_keys(x[:, bad], k)
    return out


def _pattern_knn(x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pattern path on float32 2 x P points: (bins int16 k x P, d^2 float32 k x P, rows int64 that
    it could not settle; their bins and d^2 are garbage and must be filled by another path)."""
    p = x.shape[1]
    if k > _PATTERN_MAX_K:
        z = torch.zeros(k, p, device=x.device)
        return z.short(), z, torch.arange(p, device=x.device)
    lut, bins, valid, du, dv = _pattern_tables(k, x.device)
    centre, uv = _centre(x)
    cbin = torch.index_select(_centre_table(x.device), 0, _flat_centre(centre))
    pat = torch.index_select(lut, 0, _cell(uv, _PATTERN_CELLS)).to(torch.int64)
    key = pat.mul(NUM_BINS + 1).add_(cbin)
    ok = torch.index_select(valid, 0, key)
    # K-major: one 1-D gather per neighbour rank, then every later op runs on contiguous rows.
    idx = torch.empty(k, p, dtype=torch.int16, device=x.device)
    for j in range(k):
        torch.index_select(bins[j], 0, key, out=idx[j])
    d2 = _sq_dist(torch.index_select(du, 1, pat), torch.index_select(dv, 1, pat), uv, 0)
    return idx, d2, (~ok).nonzero().squeeze(1)


def _gauss(d2: Tensor, sigma: float, dim: int) -> Tensor:
    """Normalised exp(-d^2 / (2 sigma^2)) along dim (in place on d2; d2 sorted along dim).

    The nearest distance (first along dim) is subtracted first: same normalised weights, and far
    out-of-gamut points do not underflow to 0 / 0.
    """
    w = d2.sub_(d2.narrow(dim, 0, 1).clone()).mul_(-0.5 / (sigma * sigma)).exp_()
    return w.div_(w.sum(dim, keepdim=True))


def _encode(ab: Tensor, k: int, sigma: float | None) -> tuple[Tensor, Tensor | None]:
    """K nearest bins of every pixel of ab (N x 2 x H x W) and, if sigma, their Gaussian weights.

    Returns (N x k x H x W int64, N x k x H x W float32/float64 or None).
    """
    _check_nchw(ab, 2, "ab")
    if not ab.is_floating_point():
        raise TypeError(f"ab must be floating point, got {ab.dtype}")
    n, _, h, w = ab.shape
    p = n * h * w
    dev = ab.device
    x = ab.reshape(n, 2, h * w).transpose(0, 1).reshape(2, p).to(torch.float32)  # a; b
    # Everything is K-major (k x P) until the end: the per-rank gathers and the Gaussian then
    # run on contiguous rows, and one transposing copy makes the N x k x H x W outputs.
    idx = torch.empty(k, p, dtype=torch.int16, device=dev)
    d2 = torch.empty(k, p, dtype=torch.float32, device=dev)
    rest = []
    for s in range(0, p, _KNN_CHUNK):
        e = min(s + _KNN_CHUNK, p)
        idx[:, s:e], d2[:, s:e], r = _pattern_knn(x[:, s:e], k)
        rest.append(r + s)
    # What the pattern path left (a few percent), all at once: the general search's cost is
    # mostly per call at these sizes.
    left = torch.cat(rest) if rest else torch.empty(0, dtype=torch.int64, device=dev)
    for s in range(0, left.numel(), _KNN_CHUNK):
        cols = left[s : s + _KNN_CHUNK]
        keys = _general_keys(x[:, cols], k).t()
        idx[:, cols] = (keys & _IDX_MASK).to(torch.int16)
        d2[:, cols] = _unpack_d2(keys)
    indices = idx.view(k, n, h, w).transpose(0, 1)
    indices = indices.to(torch.int64, memory_format=torch.contiguous_format)
    if sigma is None:
        return indices, None
    if ab.dtype == torch.float64:
        # The search ran in float32; the weights use float64 distances to the chosen bins.
        cen = _gamut_const(dev, torch.float64)
        d2 = (ab[:, :1] - cen[:, 0][indices]).square_() + (ab[:, 1:] - cen[:, 1][indices]).square_()
        return indices, _gauss(d2, sigma, 1)
    weights = _gauss(d2, sigma, 0)
    return indices, weights.view(k, n, h, w).transpose(0, 1).contiguous()


def soft_encode(ab: Tensor, neighbors: int = 10, sigma: float = 5.0) -> tuple[Tensor, Tensor]:
    """Soft-encode ab values over their K nearest bins (exact; ab is not rounded).

    ab: float N x 2 x H x W (any values; far outside the gamut is fine).
    Returns (indices: int64 N x K x H x W, sorted by increasing distance, exact ties by lower index;
             weights: N x K x H x W, exp(-d^2 / (2 sigma^2)) normalised to sum 1 over K;
             float32, or float64 for float64 ab).
    The search runs on the float32 values of ab. For float32 ab the weights come from float32
    distances, which is ample in and around the gamut but coarse for |ab| in the thousands;
    pass float64 ab if such values matter.
    """
    k = int(neighbors)
    if not 1 <= k <= NUM_BINS:
        raise ValueError(f"neighbors must be in 1..{NUM_BINS}, got {neighbors}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    indices, weights = _encode(ab, k, float(sigma))
    assert weights is not None
    return indices, weights


def dense_soft_encoding(indices: Tensor, weights: Tensor, num_bins: int = NUM_BINS) -> Tensor:
    """Scatter a sparse soft encoding into the dense form.

    indices: int64 N x K x H x W, weights: N x K x H x W -> N x num_bins x H x W (weights' dtype).
    """
    if indices.shape != weights.shape or indices.dim() != 4:
        raise ValueError(
            f"indices and weights must both be N x K x H x W, got {tuple(indices.shape)} and "
            f"{tuple(weights.shape)}"
        )
    n, _, h, w = indices.shape
    out = torch.zeros(n, num_bins, h, w, dtype=weights.dtype, device=weights.device)
    return out.scatter_add_(1, indices, weights)


def nearest_bin(ab: Tensor) -> Tensor:
    """Index of the nearest bin centre: float N x 2 x H x W -> int64 N x H x W.

    Equal to soft_encode(ab)[0][:, 0] (same search, same tie rule).
    """
    return _encode(ab, 1, None)[0][:, 0]


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
            raise ValueError(f"prior cache {path} has sigma={stored}, asked for sigma={sigma}")
        obj = obj["prior"]
    return torch.as_tensor(obj).to(torch.float32)


def _save_atomic(path: Path, prior: Tensor, sigma: float | None) -> None:
    with atomic_writer(path) as fh:
        if path.suffix == ".npy":
            np.save(fh, prior.numpy())
        else:
            torch.save({"prior": prior, "sigma": sigma}, fh)


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
    """Class-rebalancing weights: w_q ~ ((1 - lam) p_q + lam / Q)^-1, with sum_q p_q w_q = 1.

    prior: 313 probabilities (summing to 1). Returns 313 in prior's dtype. lam = 1 gives w = 1
    everywhere (no rebalancing); lam = 0 gives w proportional to 1 / p (inf on empty bins, which
    carry no mass and are left out of the normalisation).
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
    if nearest.shape != (ab.shape[0], ab.shape[2], ab.shape[3]):
        raise ValueError(
            f"nearest must be N x H x W of ab, got {tuple(nearest.shape)} for {tuple(ab.shape)}"
        )
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
