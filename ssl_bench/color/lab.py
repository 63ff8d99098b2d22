"""sRGB <-> CIE Lab (D65 white, 2 degree observer), with exactly the constants of
``skimage.color.rgb2lab`` / ``lab2rgb`` (docs/protocols.md §1.1), so that results can be compared
with the authors' pipeline, which used scikit-image.

Two ways in: floating-point sRGB (the formula, in the input's precision) and 8-bit sRGB, the
training hot path, where table lookups replace the per-pixel powers (lab_from_uint8).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from ssl_bench.color.layout import check_nchw

__all__ = ["rgb_to_lab", "lab_to_rgb", "lab_from_uint8", "l_from_uint8"]

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
_LAB_CHUNK = 1 << 17  # full-resolution pixels per step of l_from_uint8
# Why chunks: chunk-sized temporaries stay in cache and are recycled by the allocator, while
# batch-sized ones stream through main memory (and can be fresh memory to page in on every call).


# ---------------------------------------------------------------------------------------------
# Tables for 8-bit input
# ---------------------------------------------------------------------------------------------


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


@functools.cache
def _uint8_tables(device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(Y/Yn contributions float32 3 x 256, pre-scaled by _L_STEPS so their sum is the position
    in the L table; L table: (base, step) float32 pairs packed in int64 words, so one gather
    fetches both; linear-light float64 256; colour matrix with the white folded in, float64).
    Built once per device."""
    base, step = _l_table_np()
    packed = np.ascontiguousarray(np.stack([base, step], 1).astype(np.float32)).view(np.int64)
    to = functools.partial(torch.as_tensor, device=device)
    return (
        to(_uint8_y_lut_np() * _L_STEPS, dtype=torch.float32),
        to(packed.reshape(-1)),
        to(_uint8_lin_np(), dtype=torch.float64),
        to(_XYZN_FROM_RGB, dtype=torch.float64),
    )


# ---------------------------------------------------------------------------------------------
# CIE f(t) and its inverse
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# 8-bit sRGB -> Lab
# ---------------------------------------------------------------------------------------------


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
    check_nchw(images, 3, "images")
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


# ---------------------------------------------------------------------------------------------
# The general conversions
# ---------------------------------------------------------------------------------------------


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB -> CIE Lab (D65, 2 degree observer, skimage's constants).

    rgb: N x 3 x H x W, either uint8 (0..255; table lookups, see lab_from_uint8) or floating
    point sRGB in [0, 1]. Returns N x 3 x H x W Lab with L in 0..100: float32, except float64 for
    float64 input (so a float64 round trip keeps its precision).
    """
    check_nchw(rgb, 3, "rgb")
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
    check_nchw(lab, 3, "lab")
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
