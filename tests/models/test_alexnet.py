"""AlexNet trunk: layer geometry from the conv arithmetic, cost, named outputs, checkpoint errors."""

from __future__ import annotations

import pytest
import torch

from ssl_bench.models.alexnet import CONV_LAYERS, LAYERS, AlexNet, alexnet, alexnet_small, count_flops
from ssl_bench.models.checkpoint import CheckpointMismatchError, check_state_dict


def conv_out(n: int, k: int, s: int = 1, p: int = 0, d: int = 1) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def test_faithful_geometry_matches_conv_arithmetic():
    net = alexnet()
    feats = net.forward_features(torch.zeros(1, 1, 180, 180), LAYERS)
    c1 = conv_out(180, 11, 4, 5)
    p1 = conv_out(c1, 3, 2, 1)
    p2 = conv_out(p1, 3, 2, 1)
    expected = {"conv1": (96, c1), "conv2": (256, p1), "conv3": (384, p2), "conv4": (384, p2),
                "conv5": (256, p2), "fc6": (4096, p2), "fc7": (4096, p2)}
    assert {k: (v.shape[1], v.shape[2]) for k, v in feats.items()} == expected
    assert p2 == 12  # the paper: fc6/fc7 run densely on a 12x12 map


def test_faithful_parameter_count_and_cost():
    net = alexnet()
    # grouped convs: weights = cout * cin/groups * k * k (+ bias)
    by_hand = {
        "conv1": 96 * 1 * 121 + 96, "conv2": 256 * 48 * 25 + 256, "conv3": 384 * 256 * 9 + 384,
        "conv4": 384 * 192 * 9 + 384, "conv5": 256 * 192 * 9 + 256,
        "fc6": 4096 * 256 * 36 + 4096, "fc7": 4096 * 4096 + 4096,
    }
    for name, n in by_hand.items():
        assert sum(p.numel() for p in getattr(net, name).parameters()) == n, name
    # docs/protocols.md §1.6: about 52 GFLOP per training image (forward + backward ~ 3x forward, fc8 included)
    fwd = count_flops(torch.nn.Sequential(net, torch.nn.Conv2d(4096, 313, 1)), torch.zeros(1, 1, 180, 180))
    assert 3 * fwd / 1e9 == pytest.approx(52, rel=0.05)


def test_forward_features_names_and_early_stop():
    net = alexnet_small()
    x = torch.randn(2, 1, 56, 56)
    feats = net.forward_features(x, ("conv2", "conv4"))
    assert list(feats) == ["conv2", "conv4"]
    assert all((v >= 0).all() for v in feats.values())  # post-ReLU
    full = net.forward_features(x, LAYERS)
    net.eval()
    assert torch.equal(net.forward_features(x, CONV_LAYERS)["conv3"], net.forward_features(x, ("conv3",))["conv3"])
    assert full["fc7"].shape[1] == net.out_channels
    with pytest.raises(ValueError, match="conv6"):
        net.forward_features(x, ("conv6",))


def test_rgb_trunk_and_bad_arguments():
    assert AlexNet(in_channels=3, input_space="rgb").conv1[0].in_channels == 3
    with pytest.raises(ValueError, match="backbone.widths"):
        AlexNet(widths=(1, 2, 3))
    with pytest.raises(ValueError, match="backbone.input_space"):
        AlexNet(input_space="lab")


def test_checkpoint_mismatch_lists_keys():
    small, big = alexnet_small(), alexnet()
    check_state_dict(small, alexnet_small().state_dict(), "same")  # fits
    with pytest.raises(CheckpointMismatchError,
                       match=r"shape mismatches: .*conv1\.0\.weight: "
                             r"checkpoint \(48, 1, 11, 11\) vs model \(96, 1, 11, 11\)") as e:
        check_state_dict(big, small.state_dict(), "small.ckpt")
    assert "small.ckpt" in str(e.value)
    state = dict(small.state_dict())
    state["extra.weight"] = torch.zeros(1)
    del state["fc7.0.bias"]
    with pytest.raises(CheckpointMismatchError) as e:
        check_state_dict(small, state, "x")
    assert "missing keys: fc7.0.bias" in str(e.value) and "unexpected keys: extra.weight" in str(e.value)


def test_flop_count_equals_torch_flop_counter():
    """count_flops (the MFU denominator of bench/gpu.py) against torch's own FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode
    model = torch.nn.Sequential(alexnet(), torch.nn.Conv2d(4096, 313, 1))
    x = torch.zeros(2, 1, 176, 176)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    assert count_flops(model, x) == counter.get_total_flops()


@pytest.mark.slow
def test_prepared_gpu_script_runs_on_cpu(tmp_path):
    """bench/gpu.py runs only on a GPU machine: its quick CPU mode keeps it from rotting."""
    import json
    import subprocess
    import sys

    from helpers import ROOT
    script = ROOT / "bench" / "gpu.py"
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(script), "--quick", "--device", "cpu", "--json", str(out)],
                   check=True, capture_output=True, timeout=600)
    res = json.loads(out.read_text())
    runs = {(r["run"], r["dtype"]) for r in res["rows"]}
    assert len(runs) == 10 and all(r["samples_per_s"] > 0 and r["gflop_per_sample"] > 0 for r in res["rows"])
    col = next(r for r in res["rows"] if r["run"] == "colorization b80")
    # quick mode: crop 64; training FLOPs = 3 x the forward pass of trunk + 313-way head
    fwd = count_flops(torch.nn.Sequential(alexnet(), torch.nn.Conv2d(4096, 313, 1)), torch.zeros(1, 1, 64, 64))
    assert col["gflop_per_sample"] == pytest.approx(3 * fwd / 1e9)
