"""Patch pairs for context prediction (Doersch, Gupta, Efros 2015) and their shortcut countermeasures.

Pure, batched tensor functions: they run on whatever device the images are on, draw their random
numbers from an optional ``torch.Generator`` (the global RNG otherwise), and never loop over the
batch in Python, so the pretext machinery costs little next to the two trunk passes.

The grid: three patches of side ``patch`` per row and column, ``gap`` pixels apart, i.e. a grid
spacing of ``patch + gap``. The first patch is the centre cell (1, 1); the second is one of its
eight neighbours, numbered as in the paper::

    1 2 3
    4 _ 5          label = number - 1
    6 7 8

Each patch is moved independently by up to ``jitter`` pixels along each axis, so that the network
cannot solve the task by continuing straight lines or textures across the gap.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_bench.errors import ConfigError

__all__ = ["NUM_POSITIONS", "POSITIONS", "GREEN_MAGENTA", "min_image_size", "sample_patch_pairs",
           "drop_color", "project_color", "pixelate"]

# (row, col) offsets of the second patch relative to the centre one, in label order 0..7 (= 1..8).
POSITIONS: tuple[tuple[int, int], ...] = ((-1, -1), (-1, 0), (-1, 1),
                                          (0, -1), (0, 1),
                                          (1, -1), (1, 0), (1, 1))
NUM_POSITIONS = len(POSITIONS)
# The green-magenta opponent axis in RGB, unit length: (-1, 2, -1) / sqrt(6).
GREEN_MAGENTA: tuple[float, float, float] = (-1 / math.sqrt(6), 2 / math.sqrt(6), -1 / math.sqrt(6))


def min_image_size(patch: int, gap: int, jitter: int) -> int:
    """Smallest image side that holds the 3 x 3 grid with its jitter: 3 patch + 2 gap + 2 jitter."""
    return 3 * patch + 2 * gap + 2 * jitter


def _uniform_int(low: Tensor | int, high: Tensor | int, shape: tuple[int, ...], device: torch.device,
                 generator: torch.Generator | None) -> Tensor:
    """Integers uniform in [low, high] (inclusive; ``high`` may be a tensor broadcastable to shape)."""
    gen_device = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=gen_device).to(device)
    span = (torch.as_tensor(high, device=device) - torch.as_tensor(low, device=device) + 1).float()
    return (torch.as_tensor(low, device=device) + (u * span).long().clamp_max(span.long() - 1)).long()


def sample_patch_pairs(images: Tensor, patch: int, gap: int, jitter: int,
                       generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One (centre, neighbour) patch pair per image, with its position label.

    For each image: a random placement of the jittered 3 x 3 grid inside the image, a random label in
    0..7 and an independent jitter in [-jitter, jitter] per patch and axis.

    Args:
        images: N x C x H x W, any dtype (uint8 loader crops or float); every image must be at least
            ``min_image_size(patch, gap, jitter)`` on both sides.
        patch, gap, jitter: patch side, pixels between neighbouring patches, maximal shift per axis.
        generator: random source (on any device); the global RNG when None.
    Returns:
        first: N x C x patch x patch, the centre patch (images' dtype and device).
        second: N x C x patch x patch, the neighbour at ``POSITIONS[label]``.
        labels: int64 N, in 0..7.
        origins: int64 N x 2 x 2, top-left (y, x) of first ([:, 0]) and second ([:, 1]) in the image.
    """
    if images.dim() != 4:
        raise ValueError(f"sample_patch_pairs: expected N x C x H x W images, got shape {tuple(images.shape)}")
    if patch < 1 or gap < 0 or jitter < 0:
        raise ConfigError(f"pretext.patch_size/gap/jitter: expected patch >= 1, gap >= 0, jitter >= 0, "
                          f"got {patch}/{gap}/{jitter}")
    n, _, h, w = images.shape
    need = min_image_size(patch, gap, jitter)
    if h < need or w < need:
        raise ConfigError(f"images of {h}x{w} px are too small for context prediction: the 3x3 grid of "
                          f"pretext.patch_size={patch}, pretext.gap={gap} with pretext.jitter={jitter} needs "
                          f"{need}x{need} px (3*patch + 2*gap + 2*jitter); raise data.crop_size or shrink "
                          f"the patches")
    device = images.device
    step, extent = patch + gap, 3 * patch + 2 * gap
    # top-left of the unjittered grid, so that every jittered patch stays inside the image
    grid = torch.stack([_uniform_int(jitter, h - extent - jitter, (n,), device, generator),
                        _uniform_int(jitter, w - extent - jitter, (n,), device, generator)], dim=1)
    labels = _uniform_int(0, NUM_POSITIONS - 1, (n,), device, generator)
    offsets = torch.tensor(POSITIONS, device=device, dtype=torch.long)[labels]        # N x 2
    cells = torch.stack([torch.ones_like(offsets), 1 + offsets], dim=1)              # N x 2 x 2
    shifts = _uniform_int(-jitter, jitter, (n, 2, 2), device, generator)
    origins = grid[:, None, :] + step * cells + shifts                               # N x 2 x 2
    # gather both patches of every image with one advanced index: (2N, P, P, C) -> (2N, C, P, P)
    ar = torch.arange(patch, device=device)
    ys = origins[..., 0].T.reshape(-1, 1) + ar                                       # 2N x P
    xs = origins[..., 1].T.reshape(-1, 1) + ar
    which = torch.arange(n, device=device).repeat(2)                                 # 2N
    both = images[which[:, None, None], :, ys[:, :, None], xs[:, None, :]].permute(0, 3, 1, 2)
    both = both.contiguous()
    return both[:n], both[n:], labels, origins


def _rand_like(x: Tensor, generator: torch.Generator | None, normal: bool) -> Tensor:
    gen_device = generator.device if generator is not None else x.device
    draw = torch.randn if normal else torch.rand
    return draw(x.shape, generator=generator, device=gen_device, dtype=torch.float32).to(x.device, x.dtype)


def drop_color(patches: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Colour dropping: keep one random channel per patch, replace the other two with weak noise.

    The noise is zero-mean Gaussian with a standard deviation of 1/100 of the kept channel's
    (over that patch's pixels), as in the paper, so the dropped channels carry no signal but are not
    exactly constant. Meant for normalised float patches (zero mean = the dataset's mean colour).

    Args:
        patches: float B x 3 x P x P.
        generator: random source; the global RNG when None.
    Returns:
        float B x 3 x P x P; per patch exactly one channel equals the input.
    """
    b, c = patches.shape[:2]
    keep = _uniform_int(0, c - 1, (b,), patches.device, generator)                   # B
    kept = patches[torch.arange(b, device=patches.device), keep]                     # B x P x P
    std = kept.flatten(1).float().std(dim=1, unbiased=False).to(patches.dtype)       # B
    noise = _rand_like(patches, generator, normal=True) * (std / 100.0).view(b, 1, 1, 1)
    is_kept = torch.arange(c, device=patches.device).view(1, c, 1, 1) == keep.view(b, 1, 1, 1)
    return torch.where(is_kept, patches, noise)


def project_color(patches: Tensor) -> Tensor:
    """Projection: remove each pixel's green-magenta component, x <- x - (x . a) a.

    Chromatic aberration shifts green relative to magenta (red + blue), which lets a network find a
    patch's position in the lens field. The paper "shifts green and magenta toward grey"; we
    implement that as the orthogonal projection off the opponent axis a = (-1, 2, -1) / sqrt(6), which
    leaves grey (1, 1, 1) and the red-blue axis (1, 0, -1) untouched. Applied to normalised patches,
    grey is the dataset's mean colour (the per-channel ImageNet std differ by < 3%, so this is
    nearly the same projection as in raw sRGB). Idempotent, deterministic.

    Args:
        patches: float B x 3 x P x P.
    Returns:
        float B x 3 x P x P with zero component along a.
    """
    a = torch.tensor(GREEN_MAGENTA, device=patches.device, dtype=patches.dtype).view(1, 3, 1, 1)
    return patches - (patches * a).sum(dim=1, keepdim=True) * a


def pixelate(patches: Tensor, prob: float, pixels: int, generator: torch.Generator | None = None) -> Tensor:
    """Random pixelation: with probability ``prob`` per patch, down- and upsample the patch.

    A selected patch is resampled to side round(sqrt(pixels)) (bilinear with antialiasing, i.e. an
    area-like average) and back to its own size (bilinear), so it keeps only about ``pixels`` values
    per channel and the network cannot rely on fine detail (the paper: "as little as 100 total
    pixels"). All patches are resampled and the selected ones picked with ``torch.where``.

    Args:
        patches: float B x C x P x P.
        prob: probability per patch (0 = identity, 1 = every patch).
        pixels: total pixels of the low-resolution version.
        generator: random source; the global RNG when None.
    Returns:
        float B x C x P x P.
    """
    if prob <= 0:
        return patches
    size = patches.shape[-2:]
    side = max(1, round(math.sqrt(pixels)))
    small = F.interpolate(patches, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    coarse = F.interpolate(small, size=size, mode="bilinear", align_corners=False)
    if prob >= 1:
        return coarse
    gen_device = generator.device if generator is not None else patches.device
    chosen = torch.rand(patches.shape[0], generator=generator, device=gen_device).to(patches.device) < prob
    return torch.where(chosen.view(-1, 1, 1, 1), coarse, patches)
