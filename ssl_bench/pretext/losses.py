"""Pure loss functions (no state, no modules), in the style of solo-learn."""

from __future__ import annotations

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


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of a N x C x h x w prediction map to the target map size (fc8 -> ab grid)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


__all__ = ["soft_cross_entropy", "soft_cross_entropy_map", "dense_soft_cross_entropy", "l2_regression", "resize_to"]
