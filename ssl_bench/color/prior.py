"""Class rebalancing (docs/protocols.md §1.4): the empirical prior over the 313 bins, its
Gaussian smoothing, the rebalancing weights and the per-pixel loss weights."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ssl_bench.color.bins import NUM_BINS, gamut_const
from ssl_bench.color.encode import bin_histogram
from ssl_bench.color.layout import check_nchw
from ssl_bench.io import atomic_writer

__all__ = ["smooth_prior", "empirical_prior", "rebalance_weights", "pixel_weights"]


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
    cen = gamut_const(p.device, torch.float64)
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
    check_nchw(ab, 2, "ab")
    if nearest.shape != (ab.shape[0], ab.shape[2], ab.shape[3]):
        raise ValueError(
            f"nearest must be N x H x W of ab, got {tuple(nearest.shape)} for {tuple(ab.shape)}"
        )
    w = torch.index_select(weights.to(ab.device), 0, nearest.reshape(-1)).view(nearest.shape)
    colourful = (ab.abs() > grey_threshold).flatten(1).any(1)
    return w * colourful.to(w.dtype)[:, None, None]
