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

Modules:

* lab: sRGB <-> Lab, and the table-driven 8-bit paths of the training hot path.
* bins: the 313 bin centres.
* encode: soft encoding, nearest bin, bin histogram; built on the exact fast search of knn
  (with its tables in knn_tables and grid). reference: the brute-force definition it matches.
* prior: empirical prior, smoothing, class-rebalancing weights.
* decoding: from predicted bin logits to ab (annealed mean, mean, mode).
"""

from __future__ import annotations

from ssl_bench.color.bins import GRID, NUM_BINS, ab_gamut
from ssl_bench.color.decoding import annealed_mean, decode, decode_mean, decode_mode
from ssl_bench.color.encode import bin_histogram, dense_soft_encoding, nearest_bin, soft_encode
from ssl_bench.color.lab import l_from_uint8, lab_from_uint8, lab_to_rgb, rgb_to_lab
from ssl_bench.color.prior import empirical_prior, pixel_weights, rebalance_weights, smooth_prior

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
