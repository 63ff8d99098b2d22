"""Tests of ssl_bench.color against independent references.

References: scikit-image's colour conversions, the published 313-bin table (docs/protocols.md §1.2,
hard-coded below), the brute-force nearest bins of ssl_bench.color.reference (float64, all 313
centres; itself checked on hand-computed cases), and the formulas of docs/protocols.md §1.3-1.5
written out in numpy.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from skimage import color as skcolor

from ssl_bench import color
from ssl_bench.color import grid, knn, reference

# Published table (docs/protocols.md §1.2): a, b_min, b_max, count.
PUBLISHED = [
    (-90, 50, 90, 5), (-80, 20, 90, 8), (-70, 0, 90, 10), (-60, -20, 90, 12),
    (-50, -30, 100, 14), (-40, -40, 100, 15), (-30, -50, 100, 16), (-20, -50, 100, 16),
    (-10, -60, 100, 17), (0, -70, 100, 18), (10, -80, 90, 18), (20, -80, 90, 18),
    (30, -90, 90, 19), (40, -100, 90, 20), (50, -100, 80, 19), (60, -110, 80, 20),
    (70, -110, 80, 20), (80, -110, 70, 19), (90, -110, 70, 19), (100, -90, 0, 10),
]  # fmt: skip
CENTRES = np.array(
    [(a, b) for a, lo, hi, _ in PUBLISHED for b in range(lo, hi + 1, 10)], dtype=np.float64
)
TIE_TOL = 1e-3  # squared-distance gap below which two bins are equally valid answers


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Single-threaded torch for this module: on a busy 2-core machine, multi-threaded kernels
    stall on each other and the runtime becomes erratic; results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# Reference implementations
# ---------------------------------------------------------------------------------------------


def ref_knn(ab_flat: np.ndarray, k: int):
    """reference.nearest_bins of P x 2 float64 points, with one rank more than asked (to see
    near ties at the k-th): (indices P x k', d^2 P x (k + 1)) with k' = min(k + 1, 313); d^2 is
    padded with inf."""
    idx, d2 = reference.nearest_bins(torch.from_numpy(as_image(ab_flat)), min(k + 1, 313))
    order = idx[0, :, 0].t().numpy()
    dd = d2[0, :, 0].t().numpy()
    if dd.shape[1] < k + 1:
        dd = np.concatenate([dd, np.full((len(dd), 1), np.inf)], 1)
    return order, dd


def ref_dense(ab_flat: np.ndarray, k: int, sigma: float = 5.0):
    """Dense P x 313 soft encoding (the formula of docs/protocols.md §1.3) and a mask of near-tie pixels
    (k-th and (k+1)-th bins equally near up to TIE_TOL but not exactly: either is correct).

    exp(-d^2 / (2 sigma^2)) / sum is evaluated as exp(-(d^2 - d0^2) / (2 sigma^2)) / sum, the
    same number, so that points far outside the gamut do not underflow to 0 / 0 here either."""
    order, d2 = ref_knn(ab_flat, k)
    w = np.exp(-(d2[:, :k] - d2[:, :1]) / (2 * sigma**2))
    w /= w.sum(1, keepdims=True)
    dense = np.zeros((len(ab_flat), len(CENTRES)))
    np.put_along_axis(dense, order[:, :k], w, 1)
    gap = d2[:, k] - d2[:, k - 1]
    near_tie = (gap > 0) & (gap < TIE_TOL)
    return dense, near_tie, order, d2


def to_flat(ab: torch.Tensor) -> np.ndarray:
    """N x 2 x H x W -> (N*H*W) x 2 float64, pixel order n, h, w."""
    return ab.permute(0, 2, 3, 1).reshape(-1, 2).double().numpy()


def dense_flat(dense: torch.Tensor) -> np.ndarray:
    return dense.permute(0, 2, 3, 1).reshape(-1, dense.shape[1]).double().numpy()


def smooth_images(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """n x h x w x 3 float images in [0, 1] with image-like content: smooth colour fields, a few
    flat-coloured discs, mild noise; one grey image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = []
    for i in range(n):
        img = np.zeros((h, w, 3))
        for c in range(3):
            fx, fy, ph = rng.uniform(0.5, 3, 2).tolist() + [rng.uniform(0, 6.3)]
            img[..., c] = 0.5 + 0.4 * np.sin(fx * 6.3 * xx + ph) * np.cos(fy * 6.3 * yy)
        for _ in range(4):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = rng.uniform(0, 1, 3)
        img += rng.normal(0, 0.02, img.shape)
        if i == 0:
            img[:] = img.mean(-1, keepdims=True)
        out.append(np.clip(img, 0, 1))
    return np.stack(out)


def all_colours(chunk: int):
    """All 2^24 8-bit colours in chunks of `chunk`, as uint8 arrays chunk x 3."""
    codes = np.arange(2**24, dtype=np.uint32)
    for s in range(0, 2**24, chunk):
        c = codes[s : s + chunk]
        yield np.stack([(c >> 16) & 255, (c >> 8) & 255, c & 255], 1).astype(np.uint8)


def as_image(rgb: np.ndarray) -> np.ndarray:
    """P x C -> 1 x C x 1 x P (N x C x H x W with H = 1)."""
    return np.ascontiguousarray(rgb.T[None, :, None, :])


# ---------------------------------------------------------------------------------------------
# Bins
# ---------------------------------------------------------------------------------------------


def test_ab_gamut_matches_published_table():
    g = color.ab_gamut()
    assert g.shape == (313, 2) and g.dtype == torch.float32
    assert color.NUM_BINS == 313 and color.GRID == 10.0
    assert g[0].tolist() == [-90.0, 50.0]
    assert g[312].tolist() == [100.0, 0.0]
    np.testing.assert_array_equal(g.double().numpy(), CENTRES)
    a = g[:, 0].numpy()
    for a0, lo, hi, count in PUBLISHED:
        col = g[a == a0]
        assert len(col) == count
        assert col[:, 1].min() == lo and col[:, 1].max() == hi
    # a ascending, then b ascending in steps of 10
    key = g[:, 0] * 1000 + g[:, 1]
    assert bool((key[1:] > key[:-1]).all())
    assert sum(c for *_, c in PUBLISHED) == 313


def test_ab_gamut_dtype_device_and_fresh():
    g = color.ab_gamut(device="cpu", dtype=torch.float64)
    assert g.dtype == torch.float64
    g[0, 0] = 12345.0  # must not corrupt the module's own copy
    assert color.ab_gamut()[0, 0].item() == -90.0


# ---------------------------------------------------------------------------------------------
# RGB <-> Lab
# ---------------------------------------------------------------------------------------------


def test_rgb_to_lab_all_8bit_colours_uint8_and_float():
    worst_u8 = np.zeros(3)
    worst_f = np.zeros(3)
    for rgb in all_colours(1 << 21):
        ref = skcolor.rgb2lab(rgb[None].astype(np.float64) / 255.0)[0]
        img = torch.from_numpy(as_image(rgb))
        lab_u8 = color.rgb_to_lab(img)
        lab_f = color.rgb_to_lab(img.float() / 255.0)
        assert lab_u8.dtype == torch.float32 and lab_f.dtype == torch.float32
        worst_u8 = np.maximum(worst_u8, np.abs(lab_u8[0, :, 0].double().numpy().T - ref).max(0))
        worst_f = np.maximum(worst_f, np.abs(lab_f[0, :, 0].double().numpy().T - ref).max(0))
    assert worst_u8.max() <= 0.01, worst_u8
    assert worst_f.max() <= 0.01, worst_f
    # The uint8 path promises more: a, b in float64 (then rounded), L within ~1e-4.
    assert worst_u8[0] <= 1e-4 and worst_u8[1:].max() <= 1e-5, worst_u8


def test_rgb_to_lab_float64_keeps_precision():
    rng = np.random.default_rng(1)
    rgb = rng.uniform(0, 1, (2, 5, 7, 3))
    ref = skcolor.rgb2lab(rgb)
    lab = color.rgb_to_lab(torch.from_numpy(rgb).permute(0, 3, 1, 2))
    assert lab.dtype == torch.float64
    np.testing.assert_allclose(lab.permute(0, 2, 3, 1).numpy(), ref, atol=1e-9)


def test_lab_to_rgb_vs_skimage_and_round_trip():
    rng = np.random.default_rng(2)
    n = 1 << 18
    lab = np.stack([rng.uniform(0, 100, n), rng.uniform(-128, 127, n), rng.uniform(-128, 127, n)], 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage warns about the negative Z it clips
        ref = skcolor.lab2rgb(lab[None])[0]
    ours = color.lab_to_rgb(torch.from_numpy(as_image(lab)).float())
    assert ours.dtype == torch.float32
    assert ours.min() >= 0 and ours.max() <= 1
    assert np.abs(ours[0, :, 0].double().numpy().T - ref).max() <= 0.01

    # Round trip over a large sample of 8-bit colours (float32 and float64 paths).
    rgb = rng.integers(0, 256, (1 << 18, 3)).astype(np.uint8)
    img = torch.from_numpy(as_image(rgb))
    back = color.lab_to_rgb(color.rgb_to_lab(img))
    assert (back * 255 - img.float()).abs().max() <= 0.01
    img64 = img.double() / 255
    back64 = color.lab_to_rgb(color.rgb_to_lab(img64))
    assert back64.dtype == torch.float64
    assert (back64 - img64).abs().max() <= 1e-9


def test_colour_conversions_batch_and_odd_shapes():
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (2, 3, 5, 7)).astype(np.uint8)
    t = torch.from_numpy(imgs)
    lab = color.rgb_to_lab(t)
    assert lab.shape == (2, 3, 5, 7)
    for i in range(2):  # each image as its own batch gives the same result
        one = color.rgb_to_lab(t[i : i + 1])
        torch.testing.assert_close(one, lab[i : i + 1], rtol=0, atol=1e-5)
        ref = skcolor.rgb2lab(imgs[i].transpose(1, 2, 0).astype(np.float64) / 255)
        assert np.abs(lab[i].permute(1, 2, 0).double().numpy() - ref).max() <= 0.01
    rgb = color.lab_to_rgb(lab)
    assert rgb.shape == (2, 3, 5, 7)
    assert (rgb * 255 - t.float()).abs().max() <= 0.01
    # channels-last memory layout is just another stride pattern
    cl = t.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(color.rgb_to_lab(cl), lab, rtol=0, atol=1e-5)
    with pytest.raises(ValueError):
        color.rgb_to_lab(t[:, :2])
    with pytest.raises(TypeError):
        color.lab_from_uint8(t.float())
    with pytest.raises(ValueError):
        color.lab_from_uint8(t, 0)


@pytest.mark.parametrize("stride", [1, 4, 8])
def test_lab_from_uint8_matches_rgb_to_lab(stride):
    rng = np.random.default_rng(4)
    imgs = torch.from_numpy(rng.integers(0, 256, (2, 3, 37, 50)).astype(np.uint8))
    full = color.rgb_to_lab(imgs)
    lum, ab = color.lab_from_uint8(imgs, stride)
    assert lum.shape == (2, 1, 37, 50) and lum.dtype == torch.float32
    hs, ws = -(-37 // stride), -(-50 // stride)
    assert ab.shape == (2, 2, hs, ws) and ab.dtype == torch.float32
    torch.testing.assert_close(lum, full[:, :1], rtol=0, atol=0)
    torch.testing.assert_close(color.l_from_uint8(imgs), lum, rtol=0, atol=0)
    torch.testing.assert_close(ab, full[:, 1:, ::stride, ::stride], rtol=0, atol=1e-5)
    # and against skimage directly
    ref = np.stack([skcolor.rgb2lab(im.permute(1, 2, 0).numpy() / 255.0) for im in imgs])
    assert np.abs(lum[:, 0].double().numpy() - ref[..., 0]).max() <= 1e-4
    ref_ab = ref[:, ::stride, ::stride, 1:].transpose(0, 3, 1, 2)
    assert np.abs(ab.double().numpy() - ref_ab).max() <= 1e-5


# ---------------------------------------------------------------------------------------------
# Soft encoding
# ---------------------------------------------------------------------------------------------


def test_reference_on_hand_computed_points():
    """The oracle itself, on points whose nearest bins can be read off the table of §1.2.

    Bin indices: the a = -90 .. -10 columns hold 5 + 8 + 10 + 12 + 14 + 15 + 16 + 16 + 17 = 113
    bins, so (0, b) is 113 + (b + 70) / 10 and (-10, b) is 96 + (b + 60) / 10; (10, b) is
    131 + (b + 80) / 10; the a = 100 column is 303 .. 312 for b = -90 .. 0.
    """
    ab = torch.tensor([[0.0, 5.0, 200.0], [0.0, 5.0, 0.0]]).view(1, 2, 1, 3)
    idx, d2 = reference.nearest_bins(ab, 4)
    assert idx.shape == (1, 4, 1, 3) and idx.dtype == torch.int64 and d2.dtype == torch.float64
    # (0, 0) is a centre; its 4 neighbours at distance 10 tie, lower indices first:
    # (-10, 0) = 102, (0, -10) = 119, (0, 10) = 121, and (10, 0) = 139 is left out.
    # (5, 5) is equidistant (d^2 = 50) from (0, 0), (0, 10), (10, 0), (10, 10).
    # (200, 0) is nearest to (100, 0), then (100, -10), (100, -20), (100, -30).
    expect = [[120, 102, 119, 121], [120, 121, 139, 140], [312, 311, 310, 309]]
    expect_d2 = [[0, 100, 100, 100], [50, 50, 50, 50], [10000, 10100, 10400, 10900]]
    assert idx[0, :, 0].t().tolist() == expect
    assert d2[0, :, 0].t().tolist() == expect_d2
    assert CENTRES[expect[0]].tolist() == [[0, 0], [-10, 0], [0, -10], [0, 10]]
    assert CENTRES[expect[2]].tolist() == [[100, 0], [100, -10], [100, -20], [100, -30]]

    _, w = reference.soft_encode(ab, 4, sigma=5.0)  # 2 sigma^2 = 50
    e = np.exp(-2.0)
    expect_w = [[1, e, e, e], [1, 1, 1, 1], [1, e, e**4, e**9]]
    expect_w = [np.array(row) / sum(row) for row in expect_w]
    np.testing.assert_allclose(w[0, :, 0].t().numpy(), np.stack(expect_w), rtol=1e-12)
    # and the fast encoder agrees exactly on these tie-laden points
    fast_idx, _ = color.soft_encode(ab, 4)
    torch.testing.assert_close(fast_idx, idx, rtol=0, atol=0)
    with pytest.raises(ValueError):
        reference.nearest_bins(ab, 0)


def wide_ab(seed: int) -> torch.Tensor:
    """N x 2 x H x W float32 ab: uniform over [-150, 150]^2 (far outside the gamut too), points
    near grid lines and cell midpoints, exact grid points, the gamut border."""
    rng = np.random.default_rng(seed)
    parts = [
        rng.uniform(-150, 150, (40000, 2)),
        rng.uniform(-60, 60, (20000, 2)),
        np.round(rng.uniform(-120, 120, (5000, 2)) / 10) * 10 + rng.normal(0, 1e-3, (5000, 2)),
        np.round(rng.uniform(-120, 120, (2000, 2)) / 10) * 10,  # exact grid points
        np.round(rng.uniform(-120, 120, (2000, 2)) / 5) * 5,  # exact midpoints (exact ties)
        CENTRES[rng.integers(0, 313, 5000)] + rng.normal(0, 6, (5000, 2)),
        np.array([[0.0, 0.0], [5.0, 5.0], [150.0, -150.0], [-150.0, 150.0]]),
    ]
    flat = np.concatenate(parts).astype(np.float32)
    flat = np.concatenate([flat, np.zeros(((-len(flat)) % 60, 2), np.float32)])
    return torch.from_numpy(flat.reshape(2, -1, 30, 2).transpose(0, 3, 1, 2).copy())


def image_ab(stride: int = 4) -> torch.Tensor:
    imgs = smooth_images(6, 96, 80, seed=5)
    lab = np.stack([skcolor.rgb2lab(im) for im in imgs])
    return torch.from_numpy(lab[:, ::stride, ::stride, 1:].transpose(0, 3, 1, 2).astype(np.float32))


@pytest.mark.parametrize("k", [10, 5])
@pytest.mark.parametrize("source", ["wide", "images"])
def test_soft_encode_equals_brute_force(k, source):
    ab = wide_ab(6) if source == "wide" else image_ab()
    idx, w = color.soft_encode(ab, k, 5.0)
    n, _, h, wd = ab.shape
    assert idx.shape == (n, k, h, wd) and idx.dtype == torch.int64
    assert w.shape == (n, k, h, wd) and w.dtype == torch.float32
    torch.testing.assert_close(w.sum(1), torch.ones(n, h, wd), rtol=0, atol=1e-5)

    flat = to_flat(ab)
    ref, near_tie, order, d2 = ref_dense(flat, k)
    ours = dense_flat(color.dense_soft_encoding(idx, w))
    assert near_tie.mean() < 0.01  # rare, even with the points placed next to grid points
    err = np.abs(ours - ref).max(1)
    assert err[~near_tie].max() <= 1e-4
    # At a tie the k-th bin may be either of the tied ones; the weights are the same multiset.
    ours_sorted = np.sort(ours, 1)[:, ::-1][:, :k]
    ref_sorted = np.sort(ref, 1)[:, ::-1][:, :k]
    assert np.abs(ours_sorted - ref_sorted).max() <= 1e-4

    # Indices in the brute force's order wherever the order is determined: every gap between
    # consecutive distances (up to the (k+1)-th) either clear or an exact tie, which goes to the
    # lower index on both sides (the documented rule).
    ours_idx = idx.permute(0, 2, 3, 1).reshape(-1, k).numpy()
    gaps = np.diff(d2, axis=1)
    determined = ((gaps >= TIE_TOL) | (gaps == 0)).all(1)
    assert determined.mean() > 0.99
    np.testing.assert_array_equal(ours_idx[determined], order[determined, :k])
    if source == "wide":
        assert (determined & (gaps == 0).any(1)).sum() > 100  # exact ties were exercised


@pytest.mark.parametrize("k", [10, 5, 1])
def test_each_search_path_is_exact(k):
    """The three internal searches (table patterns, general local search, exhaustive), each on
    its own against the brute force: a wrong path could otherwise hide behind a fallback."""
    ab = torch.cat([wide_ab(15).reshape(2, -1), image_ab().transpose(0, 1).reshape(2, -1)], 1)
    flat = ab.t().double().numpy()
    order, d2 = ref_knn(flat, k)
    gaps = np.diff(d2, axis=1)
    determined = ((gaps >= TIE_TOL) | (gaps == 0)).all(1)

    def check(rows, bins, dist):
        sel = determined[rows]
        np.testing.assert_array_equal(bins[sel], order[rows][sel, :k])
        np.testing.assert_allclose(dist[sel], d2[rows][sel, :k], rtol=1e-6, atol=1e-4)

    idx, dist, rest = knn.pattern_knn(ab, k)
    accepted = np.setdiff1d(np.arange(ab.shape[1]), rest.numpy())
    check(accepted, idx.t().long().numpy()[accepted], dist.t().double().numpy()[accepted])
    # and it takes nearly all points well inside the gamut (else it is exact but useless)
    inner = np.random.default_rng(16).uniform(-40, 40, (2, 10000)).astype(np.float32)
    inner = torch.from_numpy(inner)
    assert knn.pattern_knn(inner, k)[2].numel() < 500

    everything = np.arange(ab.shape[1])
    for search in (knn.general_keys, knn.brute_keys):
        keys = search(ab, k)
        check(everything, (keys & grid.IDX_MASK).numpy(), grid.unpack_d2(keys).double().numpy())


def test_soft_encode_sigma_float64_and_errors():
    ab = image_ab()[:2].double()
    idx, w = color.soft_encode(ab, 10, 3.0)
    assert w.dtype == torch.float64
    ref, near_tie, _, _ = ref_dense(to_flat(ab), 10, sigma=3.0)
    ours = dense_flat(color.dense_soft_encoding(idx, w))
    assert np.abs(ours - ref)[~near_tie].max() <= 1e-9
    for bad in (0, 314):
        with pytest.raises(ValueError):
            color.soft_encode(ab, bad)
    with pytest.raises(ValueError):
        color.soft_encode(ab, 10, 0.0)
    with pytest.raises(TypeError):
        color.soft_encode(ab.long())


def test_soft_encode_large_k_and_odd_inputs():
    ab = wide_ab(7)[:, :, :8]
    for k in (1, 20, 313):
        idx, w = color.soft_encode(ab, k)
        ref, near_tie, _, _ = ref_dense(to_flat(ab), k)
        ours = dense_flat(color.dense_soft_encoding(idx, w))
        assert np.abs(ours - ref)[~near_tie].max() <= 1e-4
    # Absurdly far points: right bins (their float32 weights are as coarse as float32 d^2 is).
    far = torch.tensor([[[[1e4, -1e6, 3e3]], [[-1e4, 3.0, 0.5]]]])
    idx, w = color.soft_encode(far, 10)
    order, _ = ref_knn(to_flat(far), 10)
    np.testing.assert_array_equal(idx.permute(0, 2, 3, 1).reshape(-1, 10).numpy(), order[:, :10])
    torch.testing.assert_close(w.sum(1), torch.ones(1, 1, 3))
    # NaN / inf do not crash; finite pixels are unaffected by them
    odd = ab[:1].clone()
    odd[0, 0, 0, 0] = float("nan")
    odd[0, 1, 0, 1] = float("inf")
    idx, w = color.soft_encode(odd, 10)
    assert idx.min() >= 0 and idx.max() < 313
    ref_idx, _ = color.soft_encode(ab[:1], 10)
    torch.testing.assert_close(idx[..., 1:, :], ref_idx[..., 1:, :])


@pytest.mark.parametrize("source", ["wide", "images"])
def test_nearest_bin_and_histogram(source):
    ab = wide_ab(8)[:, :, :20] if source == "wide" else image_ab()
    near = color.nearest_bin(ab)
    assert near.shape == (ab.shape[0], ab.shape[2], ab.shape[3]) and near.dtype == torch.int64
    torch.testing.assert_close(near, color.soft_encode(ab)[0][:, 0])
    order, d2 = ref_knn(to_flat(ab), 1)
    gap = d2[:, 1] - d2[:, 0]
    determined = (gap >= TIE_TOL) | (gap == 0)
    np.testing.assert_array_equal(near.reshape(-1).numpy()[determined], order[determined, 0])
    hist = color.bin_histogram(ab)
    assert hist.dtype == torch.float64 and hist.shape == (313,)
    ref_hist = np.bincount(order[:, 0], minlength=313)
    # a pixel whose two nearest bins tie to within TIE_TOL may count for either of them
    assert np.abs(hist.numpy() - ref_hist).sum() <= 2 * (~determined).sum()
    assert hist.sum() == ab.shape[0] * ab.shape[2] * ab.shape[3]


def test_dense_soft_encoding_scatter():
    rng = np.random.default_rng(9)
    idx = torch.from_numpy(np.stack([rng.permutation(313)[:4] for _ in range(2 * 3 * 5)]))
    idx = idx.reshape(2, 3, 5, 4).permute(0, 3, 1, 2).contiguous()
    w = torch.rand(2, 4, 3, 5, dtype=torch.float64)
    dense = color.dense_soft_encoding(idx, w)
    assert dense.shape == (2, 313, 3, 5)
    expect = np.zeros((2, 313, 3, 5))
    for n in range(2):
        for j in range(4):
            for y in range(3):
                for x in range(5):
                    expect[n, idx[n, j, y, x], y, x] += w[n, j, y, x].item()
    np.testing.assert_allclose(dense.numpy(), expect)


# ---------------------------------------------------------------------------------------------
# Class rebalancing
# ---------------------------------------------------------------------------------------------


def random_prior(seed: int, zeros: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.gamma(0.3, 1.0, 313)
    p[rng.permutation(313)[:zeros]] = 0
    return p / p.sum()


def test_rebalance_weights_formula():
    p = random_prior(10, zeros=20)
    for lam in (0.5, 0.25, 1.0, 0.0):
        w = color.rebalance_weights(torch.from_numpy(p), lam).numpy()
        with np.errstate(divide="ignore"):  # lam = 0: 1 / 0 on the empty bins
            expect = 1.0 / ((1 - lam) * p + lam / 313)
        expect /= (p[p > 0] * expect[p > 0]).sum()
        np.testing.assert_allclose(w, expect, rtol=1e-12)
        assert abs((p * np.where(p > 0, w, 0)).sum() - 1) < 1e-12
    # lam = 1: ((0) p + 1/Q)^-1 = Q everywhere, normalised by sum p Q = Q -> all ones
    np.testing.assert_allclose(color.rebalance_weights(torch.from_numpy(p), 1.0).numpy(), 1.0)
    w32 = color.rebalance_weights(torch.from_numpy(p).float())
    assert w32.dtype == torch.float32
    with pytest.raises(ValueError):
        color.rebalance_weights(torch.from_numpy(p), 1.5)


def test_pixel_weights_grey_images_get_zero():
    rng = np.random.default_rng(11)
    ab = torch.from_numpy(rng.uniform(-60, 60, (4, 2, 6, 7)).astype(np.float32))
    ab[1] = torch.from_numpy(rng.uniform(-5, 5, (2, 6, 7)).astype(np.float32))  # grey
    ab[1, 0, 0, 0] = 5.0  # |a| <= 5 still counts as grey
    ab[2] = torch.from_numpy(rng.uniform(-5, 5, (2, 6, 7)).astype(np.float32))
    ab[2, 1, 3, 3] = -5.01  # one coloured pixel makes the image count
    ab[3] = 0.0
    cls_w = torch.from_numpy(rng.uniform(0.1, 10, 313))
    near = color.nearest_bin(ab)
    pw = color.pixel_weights(ab, near, cls_w)
    assert pw.shape == (4, 6, 7) and pw.dtype == torch.float64
    expect = cls_w.numpy()[near.numpy()]
    expect[1] = 0
    expect[3] = 0
    np.testing.assert_allclose(pw.numpy(), expect)
    assert (pw[2] > 0).all()
    with pytest.raises(ValueError):
        color.pixel_weights(ab, near[:, :3], cls_w)


def ref_smooth(p: np.ndarray, sigma: float) -> np.ndarray:
    """p'_q = sum_r p_r G(c_q - c_r) / Z_r, Z_r = sum_q G(c_q - c_r), as explicit loops."""
    def gauss(q: int, r: int) -> float:
        return np.exp(-((CENTRES[q] - CENTRES[r]) ** 2).sum() / (2 * sigma**2))

    g = [[gauss(q, r) for r in range(313)] for q in range(313)]
    z = [sum(g[q][r] for q in range(313)) for r in range(313)]
    return np.array([sum(p[r] * g[q][r] / z[r] for r in range(313)) for q in range(313)])


def test_smooth_prior_vs_double_loop():
    p = random_prior(12, zeros=100)
    ours = color.smooth_prior(torch.from_numpy(p), 5.0)
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), ref_smooth(p, 5.0), rtol=1e-10, atol=1e-15)
    assert abs(ours.sum().item() - 1) < 1e-12
    # counts are normalised first; sigma = 0 is the identity on the distribution
    counts = torch.from_numpy(p * 1000)
    np.testing.assert_allclose(color.smooth_prior(counts, 5.0).numpy(), ours.numpy(), rtol=1e-12)
    np.testing.assert_allclose(color.smooth_prior(counts, 0.0).numpy(), p, rtol=1e-12)


class Exploding:
    """An iterable that fails the test if anything iterates it."""

    def __iter__(self):
        raise AssertionError("ab_batches consumed although the cache exists")


def test_empirical_prior_values_and_cache(tmp_path):
    batches = [wide_ab(13)[:, :, :6], image_ab()]
    refs = [ref_knn(to_flat(b), 1) for b in batches]
    near = np.concatenate([order[:, 0] for order, _ in refs])
    gap = np.concatenate([d2[:, 1] - d2[:, 0] for _, d2 in refs])
    counts = np.bincount(near, minlength=313).astype(np.float64)
    slack = 2 * ((gap > 0) & (gap < TIE_TOL)).sum() / counts.sum() + 1e-6  # near-ties, see above

    raw = color.empirical_prior(batches, sigma=None)
    assert raw.dtype == torch.float32 and raw.shape == (313,)
    assert np.abs(raw.numpy() - counts / counts.sum()).max() <= slack

    cache = tmp_path / "prior-abc123.pt"
    first = color.empirical_prior(iter(batches), sigma=5.0, cache_file=cache)
    assert np.abs(first.numpy() - ref_smooth(counts / counts.sum(), 5.0)).max() <= slack
    assert abs(first.sum().item() - 1) < 1e-5
    assert sorted(os.listdir(tmp_path)) == ["prior-abc123.pt"]  # no temp files left
    second = color.empirical_prior(Exploding(), sigma=5.0, cache_file=str(cache))
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    with pytest.raises(ValueError):  # a cache made with another sigma is not silently reused
        color.empirical_prior(Exploding(), sigma=3.0, cache_file=cache)

    npy = tmp_path / "sub" / "prior.npy"
    a = color.empirical_prior(batches, sigma=5.0, cache_file=npy)
    b = color.empirical_prior(Exploding(), sigma=5.0, cache_file=npy)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sorted(os.listdir(npy.parent)) == ["prior.npy"]


def test_empirical_prior_write_is_atomic(tmp_path, monkeypatch):
    cache = tmp_path / "prior.pt"

    def broken_save(obj, fh, *args, **kwargs):
        fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        color.empirical_prior([image_ab()[:1]], cache_file=cache)
    assert os.listdir(tmp_path) == []  # neither a partial cache nor a temp file
    with pytest.raises(ValueError):
        color.empirical_prior([], cache_file=None)


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def test_annealed_mean_mean_and_mode():
    rng = np.random.default_rng(14)
    logits = rng.normal(0, 3, (2, 313, 3, 4))
    top = rng.integers(0, 313, (2, 3, 4))
    np.put_along_axis(logits, top[:, None], logits.max(1, keepdims=True) + 5, 1)  # clear mode
    logits = torch.from_numpy(logits)
    z = np.exp(logits.numpy() - logits.numpy().max(1, keepdims=True))
    z /= z.sum(1, keepdims=True)
    expect = np.einsum("nqhw,qc->nchw", z, CENTRES)
    np.testing.assert_allclose(color.annealed_mean(logits, 1.0).numpy(), expect, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(color.decode_mean(logits).numpy(), expect, rtol=1e-10, atol=1e-10)

    # f_T(z) = exp(log z / T) / sum exp(log z / T), then the expectation (docs/protocols.md §1.5)
    T = 0.38
    zt = np.exp(np.log(z) / T)
    zt /= zt.sum(1, keepdims=True)
    np.testing.assert_allclose(
        color.annealed_mean(logits, T).numpy(), np.einsum("nqhw,qc->nchw", zt, CENTRES), atol=1e-9
    )
    mode = CENTRES[logits.numpy().argmax(1)].transpose(0, 3, 1, 2)
    np.testing.assert_allclose(color.decode_mode(logits).numpy(), mode)
    assert np.abs(color.annealed_mean(logits, 1e-3).numpy() - mode).max() < 1e-3

    torch.testing.assert_close(color.decode(logits), color.annealed_mean(logits, 0.38))
    torch.testing.assert_close(
        color.decode(logits, "annealed_mean", T=0.5), color.annealed_mean(logits, 0.5)
    )
    torch.testing.assert_close(color.decode(logits, "mean"), color.decode_mean(logits))
    torch.testing.assert_close(color.decode(logits, "mode"), color.decode_mode(logits))
    with pytest.raises(ValueError) as err:
        color.decode(logits, "median")
    for name in ("annealed_mean", "mean", "mode"):
        assert name in str(err.value)
    out32 = color.annealed_mean(logits.float())
    assert out32.dtype == torch.float32 and out32.shape == (2, 2, 3, 4)
