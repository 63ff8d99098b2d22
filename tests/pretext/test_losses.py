"""Pure losses against torch's own cross-entropy / MSE, and the schedule factory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssl_bench.models.optim import PiecewiseConstant, piecewise_constant
from ssl_bench.pretext.losses import dense_soft_cross_entropy, l2_regression, resize_to, soft_cross_entropy


def random_soft_targets(n=2, q=313, k=10, h=3, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(q, generator=g)[:k] for _ in range(n * h * w)])
    idx = idx.view(n, h, w, k).permute(0, 3, 1, 2).contiguous()
    wts = torch.rand(n, k, h, w, generator=g)
    return idx, wts / wts.sum(1, keepdim=True)


def test_sparse_soft_cross_entropy_equals_torch_probability_targets():
    idx, wts = random_soft_targets()
    logits = torch.randn(2, 313, 3, 4)
    dense = torch.zeros(2, 313, 3, 4).scatter_(1, idx, wts)
    ref = F.cross_entropy(logits, dense)  # torch's soft-label cross-entropy, mean over pixels
    assert soft_cross_entropy(logits, idx, wts).item() == pytest.approx(ref.item(), rel=1e-5)
    assert dense_soft_cross_entropy(logits, dense).item() == pytest.approx(ref.item(), rel=1e-5)


def test_pixel_weighted_cross_entropy():
    idx, wts = random_soft_targets(seed=1)
    logits = torch.randn(2, 313, 3, 4)
    v = torch.rand(2, 3, 4)
    dense = torch.zeros(2, 313, 3, 4).scatter_(1, idx, wts)
    per_pixel = F.cross_entropy(logits, dense, reduction="none")
    expected = (per_pixel * v).mean()
    assert soft_cross_entropy(logits, idx, wts, v).item() == pytest.approx(expected.item(), rel=1e-5)
    assert soft_cross_entropy(logits, idx, wts, torch.zeros_like(v)).item() == 0.0


def test_l2_regression_is_half_squared_euclidean():
    a, b = torch.randn(3, 2, 5, 5), torch.randn(3, 2, 5, 5)
    expected = 0.5 * F.mse_loss(a, b, reduction="none").sum(1).mean()
    assert l2_regression(a, b).item() == pytest.approx(expected.item(), rel=1e-6)


def test_resize_to_target_grid():
    x = torch.randn(1, 313, 4, 4)
    assert resize_to(x, (7, 7)).shape == (1, 313, 7, 7)
    assert resize_to(x, (4, 4)) is x


def test_piecewise_schedule_matches_paper_lrs():
    # docs/protocols.md §1.6: 3e-5 to 240k, 1e-5 to 300k, 3e-6 to 400k, 1e-6 after
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=3e-5)
    sched = PiecewiseConstant([240_000, 300_000, 400_000], [1, 1 / 3, 0.1, 1 / 30])
    for step, lr in [(0, 3e-5), (239_999, 3e-5), (240_000, 1e-5), (350_000, 3e-6), (449_999, 1e-6)]:
        assert 3e-5 * sched(step) == pytest.approx(lr, rel=1e-6)
    half = PiecewiseConstant([240_000], [1, 0.1], scale=0.5)
    assert half(119_999) == 1 and half(120_000) == 0.1
    assert piecewise_constant(opt, [10], [1.0, 0.5]).get_last_lr() == [3e-5]
    with pytest.raises(ValueError, match="scheduler.values"):
        PiecewiseConstant([1, 2], [1.0])
