"""Brute-force K nearest bins and soft encoding: the definition that the fast search (knn.py,
encode.py) must reproduce, written to be obviously right rather than fast.

Every ab value is compared with all 313 bin centres in float64, and the distances are sorted with
a stable sort, so exact ties go to the lower bin index, the documented rule (torch.topk leaves the
order of equal values unspecified). The soft encoding is the formula of docs/protocols.md §1.3.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssl_bench.color.bins import NUM_BINS, ab_gamut
from ssl_bench.color.layout import check_nchw

__all__ = ["nearest_bins", "soft_encode"]

_CHUNK = 1 << 12  # points per step: keeps the points x 313 distance matrix small


def _to_nchw(rows: list[Tensor], n: int, h: int, w: int) -> Tensor:
    """Chunks of per-pixel rows (P_i x k, pixel order n, h, w) -> N x k x H x W."""
    t = torch.cat(rows)
    return t.view(n, h, w, t.shape[1]).permute(0, 3, 1, 2).contiguous()


def nearest_bins(ab: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k nearest bin centres of every ab value, by exhaustive search in float64.

    ab: float N x 2 x H x W (finite values). Returns (indices: int64 N x k x H x W, by increasing
    distance, exact ties to the lower index; d2: float64 N x k x H x W, their squared distances).
    """
    check_nchw(ab, 2, "ab")
    if not 1 <= k <= NUM_BINS:
        raise ValueError(f"k must be in 1..{NUM_BINS}, got {k}")
    n, _, h, w = ab.shape
    points = ab.to(torch.float64).permute(0, 2, 3, 1).reshape(-1, 2)  # pixel order n, h, w
    centres = ab_gamut(ab.device, torch.float64)
    indices, dists = [], []
    for chunk in points.split(_CHUNK):
        d2 = (chunk[:, :1] - centres[:, 0]) ** 2 + (chunk[:, 1:] - centres[:, 1]) ** 2  # P x 313
        d2, order = torch.sort(d2, dim=1, stable=True)
        indices.append(order[:, :k])
        dists.append(d2[:, :k])
    return _to_nchw(indices, n, h, w), _to_nchw(dists, n, h, w)


def soft_encode(ab: Tensor, neighbors: int = 10, sigma: float = 5.0) -> tuple[Tensor, Tensor]:
    """Soft encoding over the K nearest bins: exp(-d^2 / (2 sigma^2)), normalised over K.

    ab: float N x 2 x H x W. Returns (indices: int64 N x K x H x W as nearest_bins;
    weights: float64 N x K x H x W summing to 1 over K). The nearest d^2 is subtracted before
    the exponential: the same normalised weights, without 0 / 0 far outside the gamut.
    """
    indices, d2 = nearest_bins(ab, neighbors)
    weights = torch.exp(-(d2 - d2[:, :1]) / (2.0 * sigma**2))
    return indices, weights / weights.sum(1, keepdim=True)
