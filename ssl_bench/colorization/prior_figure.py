"""The ab prior figure (the paper's Figure 3a): the empirical prior over the 313 in-gamut ab bins in
log10 scale, the class-rebalancing weights built from it, and each bin's colour at L = 50.

The prior is measured on a set of images, or recovered from the bin weights a colorization/full
checkpoint was trained with.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ssl_bench import color
from ssl_bench.errors import ConfigError, DataError

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PriorData", "prior_and_weights", "prior_from_weights", "prior_from_checkpoint", "prior_from_images",
           "bin_colours", "plot_prior_figure"]

PRIOR_DECADES = 5.0  # colour range of the log10 prior panel
AB_LIMIT = 115  # half-width of the ab plane shown


@dataclass
class PriorData:
    """What the prior figure plots (all float64, 313 bins in the order of color.ab_gamut())."""

    prior: Tensor  # smoothed empirical prior (sigma = 0: the raw distribution); sums to 1
    weights: Tensor  # rebalance_weights(prior, lam): sum(prior * weights) = 1
    counts: Tensor | None  # raw nearest-bin counts (None when recovered from a checkpoint)
    lam: float
    sigma: float | None  # None when recovered from a checkpoint's weights
    num_images: int
    source: str


def prior_and_weights(images: Iterable[Tensor], lam: float = 0.5, sigma: float = 5.0,
                      ab_stride: int = 1) -> PriorData:
    """The empirical ab prior of ``images`` (uint8 3 x H x W or N x 3 x H x W each, any sizes),
    smoothed with sigma (0 = raw), and the class-rebalancing weights built from it.

    A pure function: nothing is cached or written.
    """
    if sigma < 0:
        raise ConfigError(f"sigma must be >= 0, got {sigma}")
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"lambda must be in [0, 1], got {lam}")
    counts = torch.zeros(color.NUM_BINS, dtype=torch.float64)
    n = 0
    for img in images:
        batch = img[None] if img.dim() == 3 else img
        counts += color.bin_histogram(color.lab_from_uint8(batch, ab_stride)[1]).cpu()
        n += batch.shape[0]
    if not counts.sum() > 0:
        raise DataError("prior_and_weights: no pixels in the images")
    prior = counts / counts.sum() if sigma == 0 else color.smooth_prior(counts, sigma).to(torch.float64)
    weights = color.rebalance_weights(prior, lam)
    return PriorData(prior, weights, counts, lam, sigma, n, f"{n} image(s)")


def prior_from_weights(weights: Tensor, lam: float) -> Tensor:
    """Invert rebalance_weights: the prior p with rebalance_weights(p, lam) proportional to weights.

    w_q = 1 / (Z ((1 - lam) p_q + lam / Q)); sum_q p_q = 1 fixes Z = sum_q 1 / w_q.
    """
    if not 0.0 <= lam < 1.0:
        raise ValueError(f"lambda must be in [0, 1) to recover the prior from weights, got {lam}")
    w = weights.to(torch.float64)
    if w.shape != (color.NUM_BINS,) or not bool((w > 0).all()) or not bool(torch.isfinite(w).all()):
        raise ValueError(f"expected {color.NUM_BINS} positive finite bin weights")
    inv = 1.0 / w
    p = (inv / inv.sum() - lam / color.NUM_BINS) / (1.0 - lam)
    p = p.clamp_min(0.0)
    return p / p.sum()


def prior_from_checkpoint(path: str | Path, lam: float) -> PriorData:
    """The prior a colorization/full checkpoint was trained with, recovered from its ``bin_weights``."""
    from ssl_bench.models.checkpoint import CheckpointMismatchError, read_suite_checkpoint
    ckpt = read_suite_checkpoint(path, pretext="colorization", expected="a colorization model")
    w = ckpt.state_dict.get("bin_weights")
    if w is None:
        raise CheckpointMismatchError(f"checkpoint {path} has no 'bin_weights' buffer")
    w = w.to(torch.float64)
    if torch.allclose(w, torch.ones_like(w)):
        raise CheckpointMismatchError(f"checkpoint {path} ({ckpt.method}) was trained without "
                                      "rebalancing: its bin weights are all 1; measure the prior on images instead")
    prior = prior_from_weights(w, lam)
    weights = color.rebalance_weights(prior, lam)  # = w up to its normalisation
    return PriorData(prior, weights, None, lam, None, 0, f"bin weights of {Path(path).name}")


def _decoded(paths: Sequence[Path], skipped: list[tuple[str, str]]) -> Iterable[Tensor]:
    from ssl_bench.data.images import DECODE_ERRORS, decode_rgb
    for path in paths:
        try:
            yield decode_rgb(path)
        except DECODE_ERRORS as e:
            skipped.append((str(path), f"{type(e).__name__}: {e}"))


def prior_from_images(paths: Sequence[Path], where: str, lam: float = 0.5, sigma: float = 5.0,
                      ab_stride: int = 1) -> tuple[PriorData, list[tuple[str, str]]]:
    """`prior_and_weights` of the readable images among ``paths`` (described as ``where``), and
    (path, reason) of the unreadable ones. DataLayoutError when none is readable."""
    from ssl_bench.data.images import DataLayoutError
    skipped: list[tuple[str, str]] = []
    try:
        data = prior_and_weights(_decoded(paths, skipped), lam, sigma, ab_stride)
    except ValueError as e:
        if "no pixels" in str(e):
            names = ", ".join(p for p, _ in skipped[:5])
            raise DataLayoutError(f"{where}: no readable image (unreadable: {names})") from e
        raise
    data.source = where
    return data, skipped


def _bin_grid(values: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """313 values -> a (b, a) grid of 10 x 10 cells (NaN outside the gamut) and its imshow extent."""
    cen = color.ab_gamut(dtype=torch.float64).numpy()
    ia = np.rint(cen[:, 0] / color.GRID).astype(int)
    ib = np.rint(cen[:, 1] / color.GRID).astype(int)
    a0, b0 = ia.min(), ib.min()
    shape = (ib.max() - b0 + 1, ia.max() - a0 + 1) + values.shape[1:]
    grid = np.full(shape, np.nan)
    grid[ib - b0, ia - a0] = values
    g = color.GRID
    extent = (a0 * g - g / 2, ia.max() * g + g / 2, b0 * g - g / 2, ib.max() * g + g / 2)
    return grid, extent


def bin_colours(L: float = 50.0) -> np.ndarray:
    """sRGB in [0, 1] of each bin centre at lightness L: 313 x 3 (clipped to the sRGB gamut)."""
    cen = color.ab_gamut(dtype=torch.float64)
    lab = torch.cat([torch.full((color.NUM_BINS, 1), L, dtype=torch.float64), cen], 1)
    return color.lab_to_rgb(lab.T[None, :, :, None])[0, :, :, 0].T.numpy()


def _value_panels(fig: Figure, axes: Sequence[Axes], data: PriorData) -> None:
    """(a) the log10 prior, its colour scale limited to the top decades, and (b) the weights."""
    p = data.prior.numpy()
    logp = np.where(p > 0, np.log10(np.where(p > 0, p, 1.0)), np.nan)
    if data.sigma is None:
        how = f"recovered from the {data.source}"
    else:
        how = (f"smoothed, sigma = {data.sigma:g}" if data.sigma else "raw") + f"; {data.num_images} image(s)"
    # the smoothing's Gaussian tails reach 1e-70: show the top decades, lower ones at the floor
    top = float(np.nanmax(logp))
    floor = max(float(np.nanmin(logp)), top - PRIOR_DECADES)
    panels = [
        (logp, "viridis", f"(a) empirical ab prior, log10 scale\n({how})", "log10 p(a, b)", floor, top),
        (data.weights.numpy(), "magma", f"(b) class-rebalancing weights\n(lambda = {data.lam:g}, "
         "sum p w = 1)", "weight w", None, None),
    ]
    for ax, (vals, cmap, title, label, vmin, vmax) in zip(axes, panels):
        grid, extent = _bin_grid(vals)
        im = ax.imshow(grid, origin="lower", extent=extent, cmap=cmap, interpolation="nearest",
                       vmin=vmin, vmax=vmax)
        clipped = vmin is not None and float(np.nanmin(vals)) < vmin
        fig.colorbar(im, ax=ax, label=label, shrink=0.9, extend="min" if clipped else "neither")
        ax.set_title(title, fontsize=10)


def _colour_panel(ax: Axes) -> None:
    """(c) every bin in its own colour at L = 50, white outside the gamut."""
    rgb, extent = _bin_grid(bin_colours(50.0))
    rgba = np.concatenate([np.nan_to_num(rgb, nan=1.0), np.isfinite(rgb[..., :1]).astype(float)], -1)
    ax.imshow(rgba, origin="lower", extent=extent, interpolation="nearest")
    ax.set_title(f"(c) the {color.NUM_BINS} bins' colours at L = 50", fontsize=10)


def plot_prior_figure(data: PriorData) -> bytes:
    """PNG: (a) log10 prior, (b) rebalancing weights, (c) bin colours at L = 50, over the ab plane."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14.5, 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 0.82]})
    _value_panels(fig, axes[:2], data)
    _colour_panel(axes[2])
    for ax in axes:
        ax.set_xlabel("a")
        ax.set_ylabel("b")
        ax.set_xlim(-AB_LIMIT, AB_LIMIT)
        ax.set_ylim(-AB_LIMIT, AB_LIMIT)
        ax.set_aspect("equal")
        ax.grid(True, color="0.85", lw=0.4)
        ax.set_axisbelow(True)
    buf = io.BytesIO()
    fig.canvas.print_png(buf)
    return buf.getvalue()
