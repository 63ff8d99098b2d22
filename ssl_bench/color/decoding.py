"""Decoding a predicted distribution over the 313 bins into ab (docs/protocols.md §1.5)."""

from __future__ import annotations

import torch
from torch import Tensor

from ssl_bench.color.bins import NUM_BINS, gamut_const
from ssl_bench.color.layout import check_nchw

__all__ = ["annealed_mean", "decode_mean", "decode_mode", "decode"]

_DECODERS = ("annealed_mean", "mean", "mode")


def annealed_mean(logits: Tensor, T: float = 0.38) -> Tensor:
    """Annealed mean of the predicted bin distribution: N x 313 x H x W logits -> N x 2 x H x W ab.

    f_T(z) = softmax(log z / T) of z = softmax(logits) is softmax(logits / T), whose expectation
    over the bin centres is returned. T = 1 is the mean, T -> 0 the mode.
    """
    if T <= 0:
        raise ValueError(f"T must be > 0, got {T}")
    check_nchw(logits, NUM_BINS, "logits")
    prob = torch.softmax(logits / T, dim=1)
    cen = gamut_const(logits.device, prob.dtype)
    return torch.einsum("nqhw,qc->nchw", prob, cen)


def decode_mean(logits: Tensor) -> Tensor:
    """Mean of the predicted distribution (annealed mean with T = 1): N x 2 x H x W."""
    return annealed_mean(logits, 1.0)


def decode_mode(logits: Tensor) -> Tensor:
    """Centre of the most probable bin: N x 313 x H x W logits -> N x 2 x H x W ab."""
    check_nchw(logits, NUM_BINS, "logits")
    dtype = logits.dtype if logits.is_floating_point() else torch.float32
    cen = gamut_const(logits.device, dtype)
    return cen[logits.argmax(1)].permute(0, 3, 1, 2).contiguous()


def decode(logits: Tensor, method: str = "annealed_mean", T: float = 0.38) -> Tensor:
    """Decode logits into ab with one of "annealed_mean" (uses T), "mean", "mode"."""
    if method == "annealed_mean":
        return annealed_mean(logits, T)
    if method == "mean":
        return decode_mean(logits)
    if method == "mode":
        return decode_mode(logits)
    raise ValueError(f"unknown decode method {method!r}; valid choices: {', '.join(_DECODERS)}")
