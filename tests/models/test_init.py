"""Krähenbühl data-dependent init: per-unit statistics, calibration, k-means, against independent maths."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import pre_activations  # noqa: E402  (shared by the trunk tests)
from torch import nn

from ssl_bench.models.alexnet import LAYERS, alexnet_small
from ssl_bench.models.init import (
    GaussianInit,
    KraehenbuehlInit,
    RunInit,
    calibrate_layers,
    find_layers,
    gradient_ratios,
    kmeans_filters,
    kraehenbuehl_init,
    layer_patches,
    rescale_units,
    spherical_kmeans,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def images(n: int = 32, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth-ish random images: low-frequency colour blobs plus some finer texture."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.randn(n, 3, size // 8, size // 8, generator=g), size=(size, size),
                           mode="bilinear", align_corners=False)
    fine = F.interpolate(torch.randn(n, 3, size // 2, size // 2, generator=g), size=(size, size),
                         mode="bilinear", align_corners=False)
    return coarse + 0.3 * fine


def net(batch_norm: bool = True, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return alexnet_small(input_space="rgb", batch_norm=batch_norm)


def conv_outputs(trunk, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each layer's pre-activation output in eval mode (independent of ssl_bench.models.init's hooks)."""
    trunk.eval()
    return pre_activations(trunk, x)


def unit_stats(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = y.double().transpose(0, 1).reshape(y.shape[1], -1)
    return y.mean(1), y.std(1, unbiased=False)


def spread(ratios: dict[str, float]) -> float:
    return max(ratios.values()) / min(ratios.values())


# ----------------------------------------------------------------------------- rescale_units


@pytest.mark.parametrize("batch_norm", [True, False])
def test_rescale_units_gives_zero_mean_unit_std_and_keeps_directions(batch_norm):
    trunk = net(batch_norm)
    trunk.train()
    x = images()
    before = copy.deepcopy(trunk)
    stats = rescale_units(trunk, x)

    assert trunk.training and all(m.training for m in trunk.modules())  # mode restored
    assert list(stats) == [f"{n}.0" for n in LAYERS]
    # returned stats of conv1 = the untouched conv1 on the raw images
    m1, s1 = unit_stats(conv_outputs(before, x)["conv1"])
    assert stats["conv1.0"] == pytest.approx((m1.mean().item(), s1.mean().item()), rel=1e-4, abs=1e-6)

    for name, y in conv_outputs(trunk, x).items():
        mean, std = unit_stats(y)
        assert mean.abs().max() < 1e-4, name
        assert (std - 1).abs().max() < 1e-3, name
        w0 = getattr(before, name)[0].weight.flatten(1)
        w1 = getattr(trunk, name)[0].weight.flatten(1)
        assert torch.allclose(F.cosine_similarity(w0, w1, dim=1), torch.ones(len(w0)), atol=1e-5), name
        assert not torch.allclose(w0, w1)  # it did rescale

    # a second batch from the same distribution: near (0, 1), loosely
    for name, y in conv_outputs(trunk, images(seed=1)).items():
        mean, std = unit_stats(y)
        assert mean.abs().mean() < 0.2, name
        assert 0.8 < std.mean() < 1.2 and std.min() > 0.5 and std.max() < 1.6, name

    if batch_norm:  # running stats reset: eval-mode forward = batch-statistics forward
        bn = trunk.conv3[1]
        assert torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean), atol=1e-6)
        assert torch.allclose(bn.running_var, torch.ones_like(bn.running_var), atol=1e-5)
        trained = copy.deepcopy(trunk).train()
        with torch.no_grad():
            assert torch.allclose(trained(x), trunk.eval()(x), atol=1e-3)


def test_rescale_units_on_a_torchvision_like_trunk():
    """Conv without bias + BN + global pooling + Linear: found in order, BN matched, Linear normalised."""
    torch.manual_seed(1)
    trunk = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )
    x = images(16, 32)
    layers = find_layers(trunk, x)
    assert [(i.name, len(i.norms)) for i in layers] == [("0", 1), ("3", 0), ("7", 0)]
    assert layers[0].norms[0] is trunk[1]
    rescale_units(trunk, x)
    with torch.no_grad():
        y0 = trunk[0](x)
        _, std0 = unit_stats(y0)
        assert (std0 - 1).abs().max() < 1e-3  # no bias: scale only
        m0, _ = unit_stats(y0)  # BN running mean = what the conv now produces
        assert torch.allclose(trunk[1].running_mean.double(), m0, atol=1e-4)
        h = trunk[:4](x)
        mean, std = unit_stats(h)
        assert mean.abs().max() < 1e-4 and (std - 1).abs().max() < 1e-3
        mean, std = unit_stats(trunk(x))
        assert mean.abs().max() < 1e-4 and (std - 1).abs().max() < 1e-3


# ------------------------------------------------------------------------------- calibration


def test_gradient_ratios_match_autograd_and_leave_no_trace():
    trunk = net(batch_norm=True)
    trunk.eval()
    trunk.conv2[0].weight.requires_grad_(False)
    x = images(8)
    buffers = {k: v.clone() for k, v in trunk.state_dict().items() if "running" in k}
    ratios = gradient_ratios(trunk, x, draws=2, seed=3)

    assert not trunk.training
    assert all(p.grad is None for p in trunk.parameters())
    assert not trunk.conv2[0].weight.requires_grad and trunk.conv1[0].weight.requires_grad
    assert all(torch.equal(trunk.state_dict()[k], v) for k, v in buffers.items())
    # independent computation: two explicit backward passes in train mode
    ref = copy.deepcopy(trunk).train()
    for p in ref.parameters():
        p.requires_grad_(True)
    g = torch.Generator().manual_seed(3)
    sq = {n: 0.0 for n in LAYERS}
    for _ in range(2):
        out = ref(x)
        z = torch.randn(out.shape, generator=g)
        ref.zero_grad()
        (out * z).sum().backward()
        for n in LAYERS:
            sq[n] += getattr(ref, n)[0].weight.grad.pow(2).sum().item()
    for n in LAYERS:
        w = getattr(trunk, n)[0].weight
        assert ratios[f"{n}.0"] == pytest.approx(sq[n] / 2 / w.pow(2).sum().item(), rel=1e-3), n


def test_quarter_power_scaling_law():
    """Scaling one layer by zeta: C_k -> C_k / zeta^4 with BN; C_k / zeta^2, others * zeta^2 without."""
    x = images(8)
    zeta = 2.0
    for batch_norm in (True, False):
        trunk = net(batch_norm)  # Gaussian init: biases are zero, so the ReLU net is homogeneous
        c0 = gradient_ratios(trunk, x, draws=2, seed=1)
        with torch.no_grad():
            trunk.conv3[0].weight.mul_(zeta)
        c1 = gradient_ratios(trunk, x, draws=2, seed=1)
        for k in c0:
            if k == "conv3.0":
                expected = c0[k] / zeta ** (4 if batch_norm else 2)
            else:
                expected = c0[k] * (1 if batch_norm else zeta ** 2)
            assert c1[k] == pytest.approx(expected, rel=1e-2), (batch_norm, k)


@pytest.mark.parametrize("batch_norm, iterations", [(True, 1), (False, 3)])
def test_calibration_equalises_gradient_ratios(batch_norm, iterations):
    trunk = net(batch_norm)
    x = images(16)
    rescale_units(trunk, x)
    assert spread(gradient_ratios(trunk, x, seed=7)) > 10  # large before, so this can fail
    with torch.no_grad():
        before = trunk.eval()(x)
    trunk.train()
    scales = calibrate_layers(trunk, x, iterations=iterations, draws=4, seed=0)
    assert trunk.training
    assert set(scales) == {f"{n}.0" for n in LAYERS}
    assert spread(gradient_ratios(trunk, x, seed=7)) < 1.5  # other random gradients
    if batch_norm:
        # scale invariance: one iteration equalises the very draws it measured...
        assert spread(gradient_ratios(trunk, x, seed=0)) < 1.01
        # ...and the scaled running stats keep the eval-mode function
        with torch.no_grad():
            assert torch.allclose(trunk.eval()(x), before, atol=1e-3)


def test_calibration_is_exact_in_one_round_without_batch_norm():
    """BN-free ReLU net with non-zero biases (an absorbed trunk): the biases follow the scaling of the
    layers below, so the net stays positively homogeneous and one round equalises the draws it measured."""
    trunk = net(batch_norm=False)
    x = images(8)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for i, name in enumerate(LAYERS):
            layer = getattr(trunk, name)[0]
            layer.weight.mul_(4.0 ** ((i % 3) - 1))
            layer.bias.copy_(0.3 * torch.randn(layer.bias.shape, generator=g))
    assert spread(gradient_ratios(trunk, x, draws=2, seed=0, train=False)) > 10
    calibrate_layers(trunk, x, iterations=1, draws=2, seed=0)
    assert spread(gradient_ratios(trunk, x, draws=2, seed=0, train=False)) < 1.01


# ------------------------------------------------------------------------------------ k-means


def objective(x: torch.Tensor, centroids: torch.Tensor, assign: torch.Tensor) -> float:
    """Mean cosine of points to their assigned centroid (higher = tighter clusters)."""
    return (x * F.normalize(centroids, dim=1)[assign]).sum(1).mean().item()


def test_spherical_kmeans_recovers_planted_directions_and_improves_objective():
    g = torch.Generator().manual_seed(0)
    planted = F.normalize(torch.randn(4, 20, generator=g), dim=1)
    x = F.normalize(planted.repeat(100, 1) + 0.15 * torch.randn(400, 20, generator=g), dim=1)
    centroids, assign = spherical_kmeans(x, 16, iters=10, generator=torch.Generator().manual_seed(1))
    assert centroids.shape == (16, 20)
    assert torch.allclose(centroids.norm(dim=1), torch.ones(16), atol=1e-5)
    assert (planted @ centroids.T).max(1).values.min() > 0.95
    assert torch.equal(assign, (x @ centroids.T).argmax(1))
    # every non-empty centroid is the normalised mean of its points (Lloyd fixed point, nearly)
    for c in assign.unique():
        assert F.cosine_similarity(x[assign == c].mean(0), centroids[c], dim=0) > 0.99

    # objective vs random assignment, and monotone over iterations
    rand = torch.randint(0, 16, (400,), generator=g)
    rand_centroids = torch.zeros(16, 20).index_add_(0, rand, x)
    assert objective(x, centroids, assign) > objective(x, rand_centroids, rand) + 0.3
    objs = [objective(x, *spherical_kmeans(x, 16, iters=i, generator=torch.Generator().manual_seed(1)))
            for i in (0, 1, 3, 10)]
    assert all(a <= b + 1e-6 for a, b in zip(objs, objs[1:])) and objs[-1] > objs[0]


def test_layer_patches_match_manual_extraction_per_group():
    conv = nn.Conv2d(4, 6, 3, stride=2, groups=2)
    x = torch.randn(2, 4, 7, 7)
    patches = layer_patches(conv, x, max_patches=10_000, generator=torch.Generator().manual_seed(0), group=1)
    manual = torch.stack([x[n, 2:4, 2 * i:2 * i + 3, 2 * j:2 * j + 3].flatten()
                          for n in range(2) for i in range(3) for j in range(3)])
    manual = F.normalize(manual - manual.mean(1, keepdim=True), dim=1)
    assert torch.allclose(patches, manual, atol=1e-5)
    capped = layer_patches(conv, x, max_patches=5, generator=torch.Generator().manual_seed(0), group=0)
    assert capped.shape == (5, 18)


def test_kmeans_filters_shapes_and_determinism():
    trunk = net()
    x = images(8)
    conv2 = trunk.conv2[0]  # grouped
    inp = trunk.pool1(trunk.conv1(x)).detach()
    a = kmeans_filters(conv2, inp, iters=3, max_patches=500, seed=0)
    assert a.shape == conv2.weight.shape
    assert torch.allclose(a.flatten(1).norm(dim=1), torch.ones(len(a)), atol=1e-4)
    assert torch.equal(a, kmeans_filters(conv2, inp, iters=3, max_patches=500, seed=0))
    assert not torch.equal(a, kmeans_filters(conv2, inp, iters=3, max_patches=500, seed=1))


def fit_gain(w: torch.Tensor, ref: torch.Tensor, patches: torch.Tensor) -> bool:
    """Filters respond to data structure: their best-matching patch (in the whitened space the
    filters live in) fits better than for Gaussian filters, measured as the spread of responses."""
    def spread(f: torch.Tensor) -> float:
        r = patches @ F.normalize(f.flatten(1), dim=1).T
        return (r.std(0) / r.abs().mean(0).clamp_min(1e-12)).mean().item()
    return spread(w) > spread(ref)


def test_whitened_kmeans_matches_sklearn_pca_whitening():
    from sklearn.decomposition import PCA

    from ssl_bench.models.init import whitened_kmeans
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(12, 12, generator=g) * torch.logspace(0, -2, 12)[:, None]  # anisotropic
    x = (torch.randn(400, 12, generator=g) @ mix).double()
    ours = whitened_kmeans(x, 6, iters=5, generator=torch.Generator().manual_seed(3), eps=0.0)
    pca = PCA(n_components=6, whiten=True).fit(x.numpy())
    w = torch.from_numpy(pca.transform(x.numpy()))
    cents, _ = spherical_kmeans(F.normalize(w, dim=1).float(), 6, 5, torch.Generator().manual_seed(3))
    basis = torch.from_numpy(pca.components_.T / np.sqrt(pca.explained_variance_))  # D x k
    ref = F.normalize(cents.double() @ basis.T, dim=1).float()
    assert torch.allclose(ours, ref, atol=1e-4)


def test_kmeans_init_uses_centroids_that_fit_the_patches():
    x = images(16)
    gaussian = net()
    trunk = net()
    report = kraehenbuehl_init(trunk, x, kmeans=True, calibrate=False, kmeans_iters=5, max_patches=2000, seed=0)
    assert report["kmeans"] and report["layers"] == [f"{n}.0" for n in LAYERS]
    conv1 = trunk.conv1[0]
    # conv1 filters are, up to scale, the k-means centroids of image patches
    centroids = kmeans_filters(conv1, x, iters=5, max_patches=2000, seed=0).flatten(1)
    assert torch.allclose(F.cosine_similarity(conv1.weight.flatten(1), centroids, dim=1),
                          torch.ones(len(centroids)), atol=1e-4)
    # whitening makes the filters diverse: raw k-means centroids of the same patches are much more
    # alike (the low-frequency directions dominate them)
    patches = layer_patches(conv1, x, 3000, torch.Generator().manual_seed(5))
    raw, _ = spherical_kmeans(patches, conv1.out_channels, 5, torch.Generator().manual_seed(0))

    def alike(w: torch.Tensor) -> float:
        w = F.normalize(w.flatten(1), dim=1)
        c = (w @ w.T).abs()
        return ((c.sum() - c.diagonal().sum()) / (len(w) * (len(w) - 1))).item()
    assert alike(conv1.weight) < 0.8 * alike(raw)
    assert fit_gain(conv1.weight, gaussian.conv1[0].weight, patches)
    # still rescaled to (0, 1) per unit
    for name, y in conv_outputs(trunk, x).items():
        mean, std = unit_stats(y)
        assert mean.abs().max() < 1e-4 and (std - 1).abs().max() < 1e-3, name
    # deterministic given the seed
    again = net(seed=1)
    kraehenbuehl_init(again, x, kmeans=True, calibrate=False, kmeans_iters=5, max_patches=2000, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(trunk.state_dict().values(), again.state_dict().values()))


# ----------------------------------------------------------------------------- config classes


@pytest.mark.parametrize("training", [True, False])
def test_config_classes_end_to_end(training):
    trunk = net()
    trunk.train(training)
    x = images(24)
    x[16:] = float("nan")  # beyond num_images: must not be used
    init = KraehenbuehlInit(num_images=16, kmeans_iters=3, max_patches=1000, seed=2)
    assert init.name == "kraehenbuehl" and GaussianInit.name == "gaussian"
    report = init(trunk, x)
    assert set(report) >= {"layers", "unit_stats", "calibration_scales"}
    assert trunk.training == training and all(m.training == training for m in trunk.modules())
    assert all(torch.isfinite(v).all() for v in trunk.state_dict().values())
    assert all(p.grad is None for p in trunk.parameters())
    with torch.no_grad():
        assert torch.isfinite(trunk(x[:16])).all()

    state = copy.deepcopy(trunk.state_dict())
    assert GaussianInit()(trunk, x) == {}
    assert all(torch.equal(state[k], v) for k, v in trunk.state_dict().items())


# ----------------------------------------------------------------------------- run_init


def test_run_init_as_the_authors_run_init_sh():
    """k-means + per-unit rescaling (output mean = bias 0.1, std 1) on conv1..conv5 only; fc6/fc7 the
    prototxt's Gaussian fillers (std 0.005, bias 1); the head's output layer zero; no calibration."""
    trunk = net(seed=3)
    start = copy.deepcopy(trunk)
    x = images(20)
    x[16:] = float("nan")  # beyond num_images: must not be used
    init = RunInit(num_images=16, kmeans_iters=3, max_patches=1000, seed=1)
    assert init.name == "run_init"
    report = init(trunk, x)

    assert report["layers"] == [f"conv{i}.0" for i in range(1, 6)] and report["kmeans"]
    assert report["gaussian_layers"] == ["fc6.0", "fc7.0"] and "calibration_scales" not in report
    outputs = conv_outputs(trunk, x[:16])
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        mean, std = unit_stats(outputs[name])
        assert (mean - 0.1).abs().max() < 1e-3 and (std - 1).abs().max() < 1e-3, name
        w, w0 = getattr(trunk, name)[0].weight.flatten(1), getattr(start, name)[0].weight.flatten(1)
        cos = F.cosine_similarity(w, w0, dim=1)
        assert cos.abs().max() < 0.99, name  # k-means filters, not the rescaled Gaussian ones
    for name in ("fc6", "fc7"):
        layer = getattr(trunk, name)[0]
        assert layer.weight.std().item() == pytest.approx(0.005, rel=0.05) and abs(layer.weight.mean()) < 5e-4
        assert torch.equal(layer.bias, torch.ones_like(layer.bias))

    head = nn.Sequential(nn.Conv2d(64, 32, 1), nn.ReLU(), nn.Conv2d(32, 313, 1))
    first = head[0].weight.clone()
    init.init_head(head)
    assert not head[2].weight.any() and not head[2].bias.any() and torch.equal(head[0].weight, first)
    kept = nn.Conv2d(64, 313, 1)
    weight = kept.weight.clone()
    RunInit(zero_head=False).init_head(kept)
    assert torch.equal(kept.weight, weight)


def test_run_init_rejects_unknown_layers():
    with pytest.raises(ValueError, match="layers: unknown layer"):
        RunInit(layers=["conv9"], num_images=4)(net(), images(4))
    with pytest.raises(ValueError, match="gaussian_layers: unknown layer"):
        RunInit(layers=["conv1"], gaussian_layers=["fc8"], kmeans=False, num_images=4)(net(), images(4))
