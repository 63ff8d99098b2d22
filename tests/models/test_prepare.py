"""VOC fine-tuning weight preparation: BN absorption, colour branch, fc layers, rescaling, files, CLI.

Every expected value is computed independently of ssl_bench.models.prepare: by hand from the BN
formula, with F.conv2d, or from per-unit statistics taken with plain tensor ops.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_TRUNK, pre_activations  # noqa: E402  (shared by the trunk tests)
from torch import nn

from ssl_bench.models.alexnet import LAYERS, AlexNet, alexnet_small
from ssl_bench.models.checkpoint import CheckpointMismatchError, load_prepared, load_suite_trunk, save_prepared
from ssl_bench.models.prepare import (
    AB_SCALE,
    MODES,
    RESCALE_METHODS,
    ColorInputTrunk,
    absorb_batch_norm,
    fc_layers,
    prepare_for_transfer,
    prepare_with_report,
    rescale_for_transfer,
)
from ssl_bench.models.split_brain import SplitBrainAlexNet

pytestmark = pytest.mark.usefixtures("one_thread")


def l_images(n: int = 8, size: int = 64, seed: int = 0) -> torch.Tensor:
    """N x 1 x size x size smooth 'L - 50' inputs in about [-50, 50]."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.randn(n, 1, size // 8, size // 8, generator=g), size=(size, size),
                           mode="bilinear", align_corners=False)
    return (20 * coarse + 3 * torch.randn(n, 1, size, size, generator=g)).clamp(-50, 50)


def lab_images(n: int = 4, size: int = 64, seed: int = 1) -> torch.Tensor:
    """N x 3 (L - 50, a, b) inputs with non-trivial ab."""
    g = torch.Generator().manual_seed(seed)
    ab = 40 * torch.randn(n, 2, size, size, generator=g)
    return torch.cat([l_images(n, size, seed), ab.clamp(-100, 100)], dim=1)


def trained_looking(seed: int = 0, **kwargs) -> AlexNet:
    """A BN trunk in eval mode with non-trivial running statistics (means off zero, vars != 1),
    set from the actual per-channel statistics on data, then perturbed, so that activations stay in a
    sensible range while the folding has real work to do."""
    torch.manual_seed(seed)
    trunk = alexnet_small(**kwargs)
    g = torch.Generator().manual_seed(seed + 100)
    x = l_images(8, 64, seed) if trunk.input_space == "L" else torch.randn(8, 3, 64, 64, generator=g)
    with torch.no_grad():
        trunk.train()
        for m in trunk.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None  # cumulative average: one pass sets the stats to this batch's
        trunk(x)
        for m in trunk.modules():
            if isinstance(m, nn.BatchNorm2d):
                std = m.running_var.sqrt()
                m.running_mean.add_(0.3 * std * torch.randn(std.shape, generator=g))
                m.running_var.mul_(torch.empty(std.shape).uniform_(0.5, 2.0, generator=g))
    return trunk.eval()


def rel_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    scale = max(a.abs().max().item(), b.abs().max().item(), 1e-12)
    return (a - b).abs().max().item() <= tol * scale


def has_bn(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


# ------------------------------------------------------------------------------ alexnet residual


def test_conv1_residual_is_added_before_batch_norm_and_relu():
    trunk = trained_looking()
    x = l_images(2)
    plain = trunk.forward_features(x, ("conv1", "conv2"))
    zero = trunk.forward_features(x, ("conv1", "conv2"), conv1_residual=torch.zeros_like(
        trunk.conv1[0](x)))
    assert torch.equal(plain["conv2"], zero["conv2"])
    r = torch.randn_like(trunk.conv1[0](x))
    got = trunk.forward_features(x, ("conv1",), conv1_residual=r)["conv1"]
    bn = trunk.conv1[1]
    z = F.conv2d(x, trunk.conv1[0].weight, trunk.conv1[0].bias, stride=4, padding=5) + r
    want = torch.relu((z - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps))
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ BN absorption


@pytest.mark.parametrize("space", ["L", "rgb"])
def test_absorbed_trunk_matches_eval_outputs_at_every_layer(space):
    trunk = trained_looking(input_space=space)
    before = copy.deepcopy(trunk.state_dict())
    absorbed = absorb_batch_norm(trunk)
    assert isinstance(absorbed, AlexNet) and not has_bn(absorbed) and has_bn(trunk)
    assert absorbed.config == {**trunk.config, "batch_norm": False}
    x = l_images(4) if space == "L" else torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        want = trunk.eval().forward_features(x, LAYERS)
        got = absorbed.eval().forward_features(x, LAYERS)
    for name in LAYERS:
        assert want[name].abs().max() > 0, name
        assert rel_close(got[name], want[name]), name
    # the input trunk is not modified
    assert all(torch.equal(v, trunk.state_dict()[k]) for k, v in before.items())


def test_absorbed_weights_match_hand_computation():
    trunk = trained_looking()
    absorbed = absorb_batch_norm(trunk)
    conv, bn = trunk.conv3[0], trunk.conv3[1]
    new = absorbed.conv3[0]
    for j in (0, 7, conv.out_channels - 1):
        s = math.sqrt(bn.running_var[j].item() + bn.eps)
        w = conv.weight[j].detach().numpy().astype(np.float64) / s
        b = (conv.bias[j].item() - bn.running_mean[j].item()) / s
        np.testing.assert_allclose(new.weight[j].detach().numpy(), w, rtol=1e-5, atol=1e-7)
        assert new.bias[j].item() == pytest.approx(b, rel=1e-5, abs=1e-6)


def test_absorbing_a_bn_free_trunk_returns_an_independent_copy():
    torch.manual_seed(0)
    trunk = alexnet_small(batch_norm=False).eval()
    copied = absorb_batch_norm(trunk)
    assert copied is not trunk and copied.conv1[0].weight is not trunk.conv1[0].weight
    x = l_images(2)
    assert torch.equal(copied(x), trunk(x))


def test_faithful_fc6_geometry_absorbs_too():
    """fc6 6x6 dilation 2 (the authors' layout) on a narrow trunk."""
    torch.manual_seed(0)
    trunk = AlexNet(**TINY_TRUNK, fc6_kernel=6, fc6_dilation=2)
    with torch.no_grad():
        for m in trunk.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 2.0)
                m.running_var.uniform_(0.5, 30.0)
    trunk.eval()
    x = l_images(2)
    with torch.no_grad():
        want, got = trunk(x), absorb_batch_norm(trunk)(x)
    assert rel_close(got, want)


# ------------------------------------------------------------------------------ colour branch


def test_zero_colour_branch_leaves_outputs_unchanged_then_learns():
    trunk = absorb_batch_norm(trained_looking())
    model = ColorInputTrunk(copy.deepcopy(trunk))
    assert model.input_space == "lab" and model.in_channels == 3
    assert model.config == {**trunk.config, "color_branch": True}
    assert model.out_channels == trunk.out_channels and model.widths == trunk.widths
    assert model.trunk.fc7[0].weight.shape == trunk.fc7[0].weight.shape  # layers reachable
    assert model.conv1_ab.weight.shape == (trunk.widths[0], 2, 11, 11)
    assert model.conv1_ab.stride == (4, 4) and model.conv1_ab.padding == (5, 5)
    assert not model.conv1_ab.weight.any() and not model.conv1_ab.bias.any()

    x = lab_images()
    with torch.no_grad():
        want = trunk.forward_features(x[:, :1], LAYERS)
        got = model.forward_features(x, LAYERS)
    for name in LAYERS:
        assert torch.equal(got[name], want[name]), name

    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss = model(x).pow(2).mean()
    loss.backward()
    assert model.conv1_ab.weight.grad.abs().sum() > 0
    assert model.trunk.conv1[0].weight.grad.abs().sum() > 0
    assert model.trunk.fc7[0].weight.grad.abs().sum() > 0
    opt.step()
    assert model.conv1_ab.weight.abs().sum() > 0
    with torch.no_grad():
        # ab now matters: the L-only trunk (same L weights) gives different conv1 outputs
        after = model.forward_features(x, ("conv1",))["conv1"]
        l_only = model.trunk.forward_features(x[:, :1], ("conv1",))["conv1"]
    assert not torch.allclose(after, l_only)


def test_colour_branch_reads_scaled_ab():
    trunk = absorb_batch_norm(trained_looking())
    model = ColorInputTrunk(trunk)
    with torch.no_grad():
        model.conv1_ab.weight.normal_(0, 0.01)
        model.conv1_ab.bias.normal_(0, 0.1)
    x = lab_images(2)
    c1 = trunk.conv1[0]
    z = (F.conv2d(x[:, :1], c1.weight, c1.bias, stride=4, padding=5)
         + F.conv2d(AB_SCALE * x[:, 1:], model.conv1_ab.weight, model.conv1_ab.bias, stride=4, padding=5))
    with torch.no_grad():
        got = model.forward_features(x, ("conv1",))["conv1"]
    assert AB_SCALE == pytest.approx(0.693)
    assert torch.allclose(got, torch.relu(z), atol=1e-4, rtol=1e-5)


def test_colour_branch_needs_an_l_trunk():
    with pytest.raises(ValueError, match="L trunk"):
        ColorInputTrunk(alexnet_small(input_space="rgb"))


# ------------------------------------------------------------------------------ fc layers


def test_fc_layers_equal_undilated_convolutions_on_a_k_by_k_roi():
    torch.manual_seed(0)
    trunk = absorb_batch_norm(AlexNet(**TINY_TRUNK, fc6_kernel=6, fc6_dilation=2).eval())
    fc6, fc7 = fc_layers(trunk)
    k, c5, fc = 6, TINY_TRUNK["widths"][-1], TINY_TRUNK["fc_channels"]
    assert isinstance(fc6, nn.Linear) and fc6.weight.shape == (fc, c5 * k * k)
    assert isinstance(fc7, nn.Linear) and fc7.weight.shape == (fc, fc)
    roi = torch.randn(3, c5, k, k)
    w6, b6 = trunk.fc6[0].weight, trunk.fc6[0].bias
    with torch.no_grad():
        want6 = F.conv2d(roi, w6, b6, dilation=1, padding=0)
        assert want6.shape == (3, fc, 1, 1)
        h = fc6(roi.flatten(1))
        assert torch.allclose(h, want6.flatten(1), atol=1e-5, rtol=1e-5)
        h = torch.relu(h)
        want7 = F.conv2d(h[:, :, None, None], trunk.fc7[0].weight, trunk.fc7[0].bias)
        assert torch.allclose(fc7(h), want7.flatten(1), atol=1e-5, rtol=1e-5)
    # copies, not views of the trunk's parameters
    assert fc6.weight.data_ptr() != w6.data_ptr()


def test_fc_layers_refuse_a_trunk_with_batch_norm():
    with pytest.raises(ValueError, match="batch norm"):
        fc_layers(alexnet_small())


# ------------------------------------------------------------------------------ rescaling


def test_rescale_after_absorption_gives_unit_statistics():
    trunk = trained_looking()
    x = l_images(8)
    prepared = prepare_for_transfer(trunk, "gray", rescale_images=x)
    assert not has_bn(prepared)
    for name, y in pre_activations(prepared, x).items():
        y = y.double().transpose(0, 1).reshape(y.shape[1], -1)
        mean, std = y.mean(1), y.std(1, unbiased=False)
        live = std > 1e-3
        assert live.float().mean() > 0.9, name
        assert mean[live].abs().max() < 1e-3, name
        assert (std[live] - 1).abs().max() < 1e-3, name


def test_rescale_for_transfer_returns_the_report_and_checks_channels():
    trunk = absorb_batch_norm(trained_looking())
    report = rescale_for_transfer(trunk, l_images(4))
    assert list(report) == [f"{n}.0" for n in LAYERS]
    with pytest.raises(ValueError, match="N x 1"):
        rescale_for_transfer(trunk, torch.randn(2, 3, 64, 64))


def test_colour_mode_rescales_the_l_trunk_and_keeps_the_branch_zero():
    trunk = trained_looking()
    x = l_images(8)
    gray = prepare_for_transfer(trunk, "gray", rescale_images=x)
    color = prepare_for_transfer(trunk, "color", rescale_images=x)
    assert isinstance(color, ColorInputTrunk) and not color.conv1_ab.weight.any()
    lab = lab_images(2)
    with torch.no_grad():
        assert torch.allclose(color(lab), gray(lab[:, :1]), atol=1e-6)


@pytest.mark.parametrize("rescale", [True, "per_unit"])
def test_per_unit_rescale_is_the_rescaling_of_before(rescale):
    trunk = trained_looking()
    x = l_images(6)
    old = prepare_for_transfer(trunk, "gray", rescale_images=x)
    new = prepare_for_transfer(trunk, "gray", rescale=rescale, images=x)
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))
    assert not torch.equal(old.conv3[0].weight, absorb_batch_norm(trunk).conv3[0].weight)


@pytest.mark.parametrize("rescale", [False, "none", None])
def test_no_rescale_is_the_absorbed_trunk(rescale):
    trunk = trained_looking()
    absorbed = absorb_batch_norm(trunk)
    images = l_images(4) if rescale is not None else None  # None without images: as before, no rescaling
    kept = prepare_for_transfer(trunk, "gray", rescale=rescale, images=images)
    assert all(torch.equal(a, b) for a, b in zip(absorbed.state_dict().values(), kept.state_dict().values()))


def test_rescale_argument_errors():
    assert RESCALE_METHODS == ("calibrate", "per_unit", "none")
    trunk, x = trained_looking(), l_images(2)
    with pytest.raises(ValueError, match="rescale='calibrate' needs images"):
        prepare_for_transfer(trunk, rescale="calibrate")
    with pytest.raises(ValueError, match="rescale: expected one of"):
        prepare_for_transfer(trunk, rescale="per-unit", images=x)
    with pytest.raises(ValueError, match="not both"):
        prepare_for_transfer(trunk, images=x, rescale_images=x)


# ------------------------------------------------------------------------------ calibration

# An independent AlexNet forward (written from the layer table of docs/protocols.md §1.6, with
# torch.nn.functional only) and an independent gradient-ratio measurement: own random 1000-way top,
# own Gaussian gradients, all of them in one batched autograd call, in float64.
GROUPS = {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2, "fc6": 1, "fc7": 1}
PADDING = {"conv2": 2, "conv3": 1, "conv4": 1, "conv5": 1, "fc7": 0}
SMALL = dict(widths=(8, 16, 16, 16, 16), fc_channels=32, fc6_dilation=2)


def functional_fc7(w: dict[str, torch.Tensor], x: torch.Tensor, deploy: bool, fc6_kernel: int) -> torch.Tensor:
    """N x C x H x W -> fc7 (after ReLU) of a BN-free AlexNet with weights ``w`` ("conv1.0.weight", ...)."""
    def conv(h, name, **kw):
        return F.relu(F.conv2d(h, w[f"{name}.0.weight"], w[f"{name}.0.bias"], groups=GROUPS[name], **kw))

    def pool(h, stride):
        return F.max_pool2d(h, 3, stride, 0, ceil_mode=True) if deploy else F.max_pool2d(h, 3, stride, 1)

    h = pool(conv(x, "conv1", stride=4, padding=0 if deploy else 5), 2)
    h = pool(conv(h, "conv2", padding=PADDING["conv2"]), 2)
    h = conv(conv(h, "conv3", padding=1), "conv4", padding=1)
    h = pool(conv(h, "conv5", padding=1), 2 if deploy else 1)
    h = conv(h, "fc6", padding=0 if deploy else SMALL["fc6_dilation"] * (fc6_kernel - 1) // 2,
             dilation=1 if deploy else SMALL["fc6_dilation"])
    return conv(h, "fc7")


def independent_ratios(trunk: AlexNet, x: torch.Tensor, draws: int = 1024, seed: int = 99) -> dict[str, float]:
    """E_z ||dL/dW||^2 / ||W||^2 per weight layer, L = sum(z * top(fc7)), z ~ N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    w = {k: v.detach().double().clone().requires_grad_(True) for k, v in trunk.state_dict().items()}
    h = functional_fc7(w, x.double(), trunk.geometry == "deploy", trunk.config["fc6_kernel"])
    y = F.conv2d(h, torch.randn(1000, h.shape[1], 1, 1, generator=g, dtype=torch.float64) * 0.01)
    z = torch.randn((draws, *y.shape), generator=g, dtype=torch.float64)
    names = [f"{n}.0.weight" for n in LAYERS]
    grads = torch.autograd.grad(y, [w[n] for n in names], grad_outputs=z, is_grads_batched=True)
    return {layer: gr.pow(2).sum().item() / draws / w[n].pow(2).sum().item()
            for layer, n, gr in zip(LAYERS, names, grads)}


def small_trunk(geometry: str) -> tuple[AlexNet, torch.Tensor]:
    """A trained-looking BN trunk (set up in the train geometry) in ``geometry``, and its images:
    deploy at 99 px with a 2x2 fc6 (1x1 fc6/fc7 maps, as at 227 with 6x6), train at 64 px."""
    fc6_kernel, size = (2, 99) if geometry == "deploy" else (3, 64)
    trained = trained_looking(**SMALL, fc6_kernel=fc6_kernel)
    trunk = AlexNet(**{**trained.config, "geometry": geometry})
    trunk.load_state_dict(trained.state_dict())
    return trunk.eval(), l_images(8, size, seed=4)


def spread(ratios: dict[str, float]) -> float:
    return max(ratios.values()) / min(ratios.values())


@pytest.mark.parametrize("geometry", ["deploy", "train"])
def test_calibrate_equalises_gradient_ratios_measured_independently(geometry):
    trunk, x = small_trunk(geometry)
    absorbed = prepare_for_transfer(trunk, "gray", rescale="none")
    with torch.no_grad():  # the independent forward is the trunk's forward
        assert rel_close(functional_fc7(absorbed.state_dict(), x, geometry == "deploy", trunk.config["fc6_kernel"]),
                         absorbed(x))
    before = independent_ratios(absorbed, x, draws=64)
    assert spread(before) > 2  # unequal before, so the check below can fail

    prepared, report = prepare_with_report(trunk, "gray", rescale="calibrate", images=x)
    assert report["rescale"] == "calibrate" and 1 <= report["calibration"]["rounds"] <= 10
    assert not has_bn(prepared) and prepared.geometry == geometry
    assert spread(independent_ratios(prepared, x)) < 1.10
    # the weights changed (whole layers scaled), the filters' directions did not
    for name in LAYERS:
        w, w0 = getattr(prepared, name)[0].weight, getattr(absorbed, name)[0].weight
        assert not torch.allclose(w, w0, rtol=1e-3), name
        assert F.cosine_similarity(w.flatten(), w0.flatten(), dim=0) > 1 - 1e-5, name


def test_calibrate_keeps_the_colour_branch_zero():
    trunk, x = small_trunk("deploy")
    gray = prepare_for_transfer(trunk, "gray", rescale="calibrate", images=x, calibration_draws=4)
    color = prepare_for_transfer(trunk, "color", rescale="calibrate", images=x, calibration_draws=4)
    assert isinstance(color, ColorInputTrunk) and not color.conv1_ab.weight.any()
    lab = torch.cat([x[:2], 30 * torch.randn(2, 2, *x.shape[-2:])], dim=1)
    with torch.no_grad():
        assert torch.allclose(color(lab), gray(x[:2]), atol=1e-6)


def split_brain_trunk() -> tuple[SplitBrainAlexNet, torch.Tensor]:
    """A trained-looking BN split-brain trunk in the deploy geometry (halves as ``small_trunk``'s
    AlexNet, 2x2 fc6 at 99 px) and its (L - 50, a, b) images."""
    halves = [trained_looking(seed, **SMALL, fc6_kernel=2) for seed in (0, 1)]
    torch.manual_seed(0)
    trunk = SplitBrainAlexNet(widths=[2 * w for w in SMALL["widths"]], fc_channels=2 * SMALL["fc_channels"],
                              fc6_kernel=2, fc6_dilation=2, geometry="deploy")
    trunk.l_half.load_state_dict(halves[0].state_dict())
    trunk.ab_half.conv1[0].weight.data.normal_(0, 0.05)  # ab: 2 input channels, its own conv1
    trunk.ab_half.load_state_dict({k: v for k, v in halves[1].state_dict().items() if k != "conv1.0.weight"},
                                  strict=False)
    return trunk.eval(), lab_images(8, 99, seed=4)


def independent_split_ratios(trunk: SplitBrainAlexNet, x: torch.Tensor, draws: int = 1024,
                             seed: int = 99) -> dict[str, float]:
    """As `independent_ratios`, for the two halves' fc7 concatenated under one random top."""
    g = torch.Generator().manual_seed(seed)
    w = {k: v.detach().double().clone().requires_grad_(True) for k, v in trunk.state_dict().items()}
    x = x.double()
    h = torch.cat([functional_fc7({k.removeprefix(f"{half}."): v for k, v in w.items()}, part, True, 2)
                   for half, part in (("l_half", x[:, :1]), ("ab_half", x[:, 1:]))], 1)
    y = F.conv2d(h, torch.randn(1000, h.shape[1], 1, 1, generator=g, dtype=torch.float64) * 0.01)
    z = torch.randn((draws, *y.shape), generator=g, dtype=torch.float64)
    names = [f"{half}.{n}.0.weight" for half in ("l_half", "ab_half") for n in LAYERS]
    grads = torch.autograd.grad(y, [w[n] for n in names], grad_outputs=z, is_grads_batched=True)
    return {n: gr.pow(2).sum().item() / draws / w[n].pow(2).sum().item() for n, gr in zip(names, grads)}


def test_split_brain_trunk_is_absorbed_and_calibrated_as_one_net():
    trunk, x = split_brain_trunk()
    absorbed = prepare_for_transfer(trunk, rescale="none")
    assert isinstance(absorbed, SplitBrainAlexNet) and not has_bn(absorbed) and not absorbed.config["batch_norm"]
    with torch.no_grad():
        ref = trunk.forward_features(x, LAYERS)
        for name, f in absorbed.forward_features(x, LAYERS).items():
            assert rel_close(f, ref[name]), name
    before = independent_split_ratios(absorbed, x, draws=64)
    assert spread(before) > 2

    prepared, report = prepare_with_report(trunk, rescale="calibrate", images=x)
    assert report["mode"] == "lab" and report["calibration"]["balance_rounds"] >= 1
    assert prepared.input_space == "lab" and prepared.geometry == "deploy"
    after = independent_split_ratios(prepared, x)
    assert spread(after) < 1.10, after
    for name in before:  # whole layers scaled, filters kept
        w, w0 = prepared.state_dict()[name], absorbed.state_dict()[name]
        assert F.cosine_similarity(w.flatten(), w0.flatten(), dim=0) > 1 - 1e-5, name


# ------------------------------------------------------------------------------ modes


@pytest.mark.parametrize("space,mode,need", [("rgb", "color", "'L'"), ("rgb", "gray", "'L'"),
                                             ("L", "rgb", "'rgb'")])
def test_mode_must_match_input_space(space, mode, need):
    trunk = alexnet_small(input_space=space)
    with pytest.raises(ValueError, match="finetune.mode") as err:
        prepare_for_transfer(trunk, mode)
    assert need in str(err.value) and repr(space) in str(err.value)


def test_auto_mode_and_unknown_mode():
    assert MODES == ("auto", "gray", "color", "rgb", "lab")
    gray = prepare_for_transfer(alexnet_small(input_space="L"))
    rgb = prepare_for_transfer(alexnet_small(input_space="rgb"))
    assert isinstance(gray, AlexNet) and gray.input_space == "L" and not has_bn(gray)
    assert isinstance(rgb, AlexNet) and rgb.input_space == "rgb"
    kept = prepare_for_transfer(alexnet_small(), absorb_bn=False)
    assert has_bn(kept)
    with pytest.raises(ValueError, match="finetune.mode"):
        prepare_for_transfer(alexnet_small(), "colour")


# ------------------------------------------------------------------------------ files and CLI


def suite_checkpoint(path, trunk: AlexNet) -> None:
    """A checkpoint in the suite's format, as the pretext modules write it."""
    torch.save({"state_dict": {"trunk." + k: v for k, v in trunk.state_dict().items()},
                "ssl_bench": {"trunk": trunk.config, "input_space": trunk.input_space,
                              "pretext": "colorization", "variant": "full"}}, path)


@pytest.mark.parametrize("mode", ["gray", "color"])
def test_save_and_load_prepared_round_trip(tmp_path, mode):
    prepared = prepare_for_transfer(trained_looking(), mode, rescale_images=l_images(4))
    if mode == "color":
        with torch.no_grad():
            prepared.conv1_ab.weight.normal_(0, 0.01)  # as if fine-tuned: must survive the round trip
    path = save_prepared(prepared, tmp_path / "sub" / "prep.pt", {"note": "x"})
    assert sorted(p.name for p in path.parent.iterdir()) == ["prep.pt"]  # no temporary left
    loaded, record = load_prepared(path)
    assert type(loaded) is type(prepared) and loaded.config == prepared.config
    assert record["mode"] == mode and record["meta"] == {"note": "x"}
    assert record["input_space"] == prepared.input_space
    x = lab_images(2) if mode == "color" else l_images(2)
    with torch.no_grad():
        assert torch.equal(loaded(x), prepared(x))


def test_load_suite_trunk_and_errors(tmp_path):
    trunk = trained_looking()
    suite_checkpoint(tmp_path / "last.ckpt", trunk)
    loaded, info = load_suite_trunk(tmp_path / "last.ckpt")
    x = l_images(2)
    with torch.no_grad():
        assert torch.equal(loaded(x), trunk(x))
    assert info["method"] == "colorization/full" and info["input_space"] == "L"
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointMismatchError, match="not written by ssl_bench"):
        load_suite_trunk(tmp_path / "other.ckpt")
    with pytest.raises(CheckpointMismatchError, match="not a prepared-weights file"):
        load_prepared(tmp_path / "last.ckpt")
    with pytest.raises(FileNotFoundError):
        load_suite_trunk(tmp_path / "missing.ckpt")
