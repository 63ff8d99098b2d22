"""Masks of the context encoder (Pathak et al. 2016): which pixels are missing, and how they are scored.

Pure, batched functions that produce their result on the requested device (the generator's device
for the random kinds), so the masks of a training batch are made on the accelerator next to the
network. A mask is ``bool N x 1 x S x S``, True = the region the network must predict.

The three kinds of the paper:

* ``center``: the central square of side S/2 (a quarter of the area), the released code's 64x64 hole
  in a 128x128 image;
* ``random_block``: several random, possibly overlapping rectangles covering *up to* a quarter of the
  image (rule in `random_block_mask`);
* ``random_region``: arbitrary shapes covering 20..30% of the image, made by thresholding a smooth
  random field (the released code thresholds a large upsampled noise pattern the same way).

The released code hides from the encoder only the predicted region shrunk by ``overlapPred`` = 4
pixels (`input_hole`); that border ring is visible context and is still predicted, with 10x weight
(`loss_weights`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_bench.errors import ConfigError

__all__ = ["MASK_KINDS", "center_mask", "random_block_mask", "random_region_mask", "input_hole",
           "loss_weights", "make_masks"]

MASK_KINDS: tuple[str, ...] = ("center", "random_block", "random_region")


def _device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


def center_mask(n: int, size: int, device: torch.device | str | None = None) -> Tensor:
    """The central square of side ``size // 2``: exactly a quarter of the area for even sizes.

    Returns:
        bool N x 1 x S x S, True on rows/cols ``[(S - S//2)//2, (S - S//2)//2 + S//2)``.
    """
    side = size // 2
    lo = (size - side) // 2
    idx = torch.arange(size, device=device)
    inside = (idx >= lo) & (idx < lo + side)
    return (inside[:, None] & inside[None, :]).expand(n, 1, size, size).clone()


def random_block_mask(n: int, size: int, generator: torch.Generator | None = None,
                      coverage: float = 0.25, num_blocks: int = 32,
                      block_range: tuple[float, float] = (0.125, 0.25),
                      device: torch.device | str | None = None) -> Tensor:
    """Random, possibly overlapping rectangles covering up to ``coverage`` of each image.

    Rule (vectorised over the batch; the Python loop runs over the ``num_blocks`` candidates): every
    image draws ``num_blocks`` rectangles whose height and width are independent integers uniform in
    ``[max(1, round(lo*S)), max(1, round(hi*S))]`` (``block_range = (lo, hi)``), placed uniformly
    inside the image. The mask is the union of the *longest prefix* of that sequence whose union
    covers at most ``coverage`` of the image (Pathak: "a number of smaller possibly overlapping
    masks, covering up to 1/4 of the image"). The first candidate always fits when
    ``(hi_px / S)**2 <= coverage`` (``hi_px`` the largest side in pixels); the prefix stops because
    the next block would push the union past ``coverage``, so the covered fraction lies in
    ``(coverage - (hi_px / S)**2, coverage]`` (with the defaults and S divisible by 4:
    ``(0.1875, 0.25]``) unless all ``num_blocks`` blocks together stay below that, which with 32
    blocks of at most 1/16 of the image practically never happens.

    Returns:
        bool N x 1 x S x S.
    """
    dev = _device(generator, device)
    lo = max(1, round(block_range[0] * size))
    hi = max(lo, min(size, round(block_range[1] * size)))
    total = float(size * size)
    # all random numbers in one draw: (height, width, top, left) per block and image
    u = torch.rand(4, num_blocks, n, generator=generator, device=dev)
    hs = (lo + (u[0] * (hi - lo + 1)).long().clamp_max(hi - lo))
    ws = (lo + (u[1] * (hi - lo + 1)).long().clamp_max(hi - lo))
    ys = (u[2] * (size - hs + 1)).long().clamp_max(size - hs)
    xs = (u[3] * (size - ws + 1)).long().clamp_max(size - ws)
    idx = torch.arange(size, device=dev)
    union = torch.zeros(n, size, size, dtype=torch.bool, device=dev)
    active = torch.ones(n, dtype=torch.bool, device=dev)
    for k in range(num_blocks):
        rows = (idx >= ys[k, :, None]) & (idx < (ys[k] + hs[k])[:, None])  # N x S
        cols = (idx >= xs[k, :, None]) & (idx < (xs[k] + ws[k])[:, None])
        grown = union | (rows[:, :, None] & cols[:, None, :])
        active = active & (grown.flatten(1).sum(1) <= coverage * total)
        union = torch.where(active[:, None, None], grown, union)
    return union[:, None]


def random_region_mask(n: int, size: int, generator: torch.Generator | None = None,
                       coverage: tuple[float, float] = (0.2, 0.3), grid: int = 8,
                       device: torch.device | str | None = None) -> Tensor:
    """Irregular shapes: the top-``k`` pixels of a smooth random field.

    A ``grid x grid`` field of standard Gaussian noise per image is upsampled bilinearly
    (``align_corners=True``, so no border pixels are clamped to equal values) to ``size``; the image's
    target fraction ``c`` is drawn uniformly in ``coverage`` and the ``k = round(c * S^2)`` largest
    field values are masked (ranked by a sort, so ties cannot change the count). The area fraction is
    therefore ``c`` up to ``0.5 / S^2``. Blobs are about ``size / grid`` pixels across.

    Returns:
        bool N x 1 x S x S.
    """
    dev = _device(generator, device)
    noise = torch.randn(n, 1, grid, grid, generator=generator, device=dev)
    c = coverage[0] + (coverage[1] - coverage[0]) * torch.rand(n, generator=generator, device=dev)
    field = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=True).flatten(1)
    k = (c * size * size).round().long()  # N
    order = field.argsort(dim=1, descending=True)
    keep = torch.arange(size * size, device=dev)[None, :] < k[:, None]  # N x S^2, first k ranks
    flat = torch.zeros_like(keep).scatter_(1, order, keep)
    return flat.view(n, 1, size, size)


def input_hole(mask: Tensor, overlap: int) -> Tensor:
    """What the encoder does not see: ``mask`` eroded by ``overlap`` pixels (square element).

    Erosion = not dilate(not mask), the dilation a ``(2*overlap+1)``-wide square stride-1 max-pool
    (run as a column and a row pool). Outside
    the image counts as masked, so a region touching the image edge keeps reaching the edge there.

    Args:
        mask: bool N x 1 x H x W.
    Returns:
        bool N x 1 x H x W, a subset of ``mask`` (equal to it when ``overlap == 0``).
    """
    if overlap <= 0:
        return mask
    k = 2 * overlap + 1  # the square element is separable: a column then a row max-pool
    grown = F.max_pool2d((~mask).float(), (k, 1), stride=1, padding=(overlap, 0))
    grown = F.max_pool2d(grown, (1, k), stride=1, padding=(0, overlap))
    return grown == 0


def loss_weights(mask: Tensor, overlap: int, overlap_weight: float = 10.0) -> Tensor:
    """Per-pixel L2 weights: 0 on the context, 1 in the hidden hole, ``overlap_weight`` on the border.

    The border is ``mask`` minus `input_hole` (``overlap`` pixels wide): visible to the encoder and
    predicted with a higher weight, which makes the prediction blend into the context.

    Args:
        mask: bool N x 1 x H x W.
    Returns:
        float32 N x 1 x H x W.
    """
    hole = input_hole(mask, overlap)
    w = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    w = w.masked_fill(mask, float(overlap_weight))
    return w.masked_fill(hole, 1.0)


def make_masks(kind: str, n: int, size: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Tensor:
    """bool N x 1 x S x S masks of ``kind`` (``pretext.mask``), on ``device`` or the generator's."""
    if kind == "center":
        return center_mask(n, size, _device(generator, device))
    if kind == "random_block":
        return random_block_mask(n, size, generator, device=device)
    if kind == "random_region":
        return random_region_mask(n, size, generator, device=device)
    raise ConfigError(f"pretext.mask: expected one of {list(MASK_KINDS)}, got {kind!r}")
