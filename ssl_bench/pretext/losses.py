"""Pure loss functions (no state, no modules), in the style of solo-learn."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_cross_entropy_map(logits: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
    """Per-pixel multinomial cross-entropy against sparse soft targets.

    Args:
        logits: N x Q x H x W; indices, weights: N x K x H x W (weights sum to 1 over K).
    Returns:
        N x H x W: -sum_k z_k log softmax(logits)[idx_k].
    """
    return -(F.log_softmax(logits.float(), dim=1).gather(1, indices) * weights).sum(dim=1)


def soft_cross_entropy(logits: Tensor, indices: Tensor, weights: Tensor,
                       pixel_weights: Tensor | None = None) -> Tensor:
    """Multinomial cross-entropy against sparse soft targets, averaged over pixels.

    loss = mean_pixels( v_p * -sum_k z_pk log softmax(logits)_p[idx_pk] )

    The sparse form (K of 313 entries) avoids materialising the dense N x 313 x H x W target.

    Args:
        logits: N x Q x H x W.
        indices: N x K x H x W int64 bin indices of the soft encoding.
        weights: N x K x H x W soft-encoding weights (sum to 1 over K).
        pixel_weights: N x H x W rebalancing weights v_p, or None for uniform (the "class" ablation).
    Returns:
        scalar.
    """
    ce = soft_cross_entropy_map(logits, indices, weights)
    if pixel_weights is not None:
        ce = ce * pixel_weights
    return ce.mean()


def dense_soft_cross_entropy(logits: Tensor, target: Tensor,
                             pixel_weights: Tensor | None = None) -> Tensor:
    """Reference form of `soft_cross_entropy` with a dense N x Q x H x W target distribution."""
    ce = -(F.log_softmax(logits.float(), dim=1) * target).sum(dim=1)
    if pixel_weights is not None:
        ce = ce * pixel_weights
    return ce.mean()


def l2_regression(pred_ab: Tensor, target_ab: Tensor) -> Tensor:
    """Euclidean loss on ab (the paper's "L2" ablation): mean over pixels of 1/2 ||pred - target||^2.

    Args:
        pred_ab, target_ab: N x 2 x H x W.
    Returns:
        scalar.
    """
    return 0.5 * (pred_ab.float() - target_ab.float()).pow(2).sum(dim=1).mean()


def image_l2(pred: Tensor, target: Tensor) -> Tensor:
    """Reconstruction error of whole images: mean over pixels of sum_channels (pred - target)^2.

    Args:
        pred, target: N x C x H x W (images in the same range, e.g. [-1, 1]).
    Returns:
        scalar, computed in float32.
    """
    return (pred.float() - target.float()).pow(2).sum(dim=1).mean()


def bigan_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The BiGAN discriminator's loss: mean binary cross-entropy of (x, E(x)) pairs labelled real
    and (G(z), z) pairs labelled fake, each half weighted 1/2 (Donahue et al.'s released code).

    Args:
        real_logits, fake_logits: N discriminator logits of the two kinds of pair.
    Returns:
        scalar.
    """
    real, fake = real_logits.float(), fake_logits.float()
    return 0.5 * (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                  + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))


def bigan_generator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The loss the BiGAN encoder and generator minimise together: the discriminator's labels
    flipped (the non-saturating form), each half weighted 1/2.

    Args:
        real_logits, fake_logits: N discriminator logits of (x, E(x)) and (G(z), z).
    Returns:
        scalar.
    """
    real, fake = real_logits.float(), fake_logits.float()
    return 0.5 * (F.binary_cross_entropy_with_logits(real, torch.zeros_like(real))
                  + F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake)))


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of a N x C x h x w prediction map to the target map size (fc8 -> ab grid)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


__all__ = ["soft_cross_entropy", "soft_cross_entropy_map", "dense_soft_cross_entropy", "l2_regression", "image_l2",
           "bigan_discriminator_loss", "bigan_generator_loss", "resize_to"]
