"""Soft encoding of ab targets over their K nearest bins (docs/protocols.md §1.3).

Exact, not a quantised lookup: the K nearest bin centres of the (unrounded) ab value, found by the
fast search of knn.py, with Gaussian weights of std sigma normalised to sum to 1. Exact ties are
broken by the lower bin index in every code path; reference.py is the brute-force definition.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssl_bench.color.bins import NUM_BINS, gamut_const
from ssl_bench.color.knn import knn
from ssl_bench.color.layout import check_nchw

__all__ = ["soft_encode", "dense_soft_encoding", "nearest_bin", "bin_histogram"]


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
    check_nchw(ab, 2, "ab")
    if not ab.is_floating_point():
        raise TypeError(f"ab must be floating point, got {ab.dtype}")
    n, _, h, w = ab.shape
    x = ab.reshape(n, 2, h * w).transpose(0, 1).reshape(2, n * h * w).to(torch.float32)  # a; b
    # knn works K-major (k x P): the Gaussian then runs on contiguous rows, and one transposing
    # copy makes the N x k x H x W outputs.
    idx, d2 = knn(x, k)
    indices = idx.view(k, n, h, w).transpose(0, 1)
    indices = indices.to(torch.int64, memory_format=torch.contiguous_format)
    if sigma is None:
        return indices, None
    if ab.dtype == torch.float64:
        # The search ran in float32; the weights use float64 distances to the chosen bins.
        cen = gamut_const(ab.device, torch.float64)
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
