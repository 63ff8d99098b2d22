"""Split-brain autoencoder: each half sees only its channels, the lightness classes, a loss that
falls, and a trunk that pretrains through the CLI and is probed from its checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import probe_pretrained, synthetic_batch, tiny_overrides, train_losses

from ssl_bench.models.alexnet import AlexNet
from ssl_bench.models.checkpoint import read_suite_checkpoint
from ssl_bench.models.inputs import trunk_input
from ssl_bench.models.layers import LAYERS
from ssl_bench.models.split_brain import TARGET, SplitBrainAlexNet
from ssl_bench.pretext.colorization import ColorObjective
from ssl_bench.pretext.split_brain import SplitBrainPretext, lightness_bins

TINY = dict(widths=(16, 32, 48, 48, 32), fc_channels=64, fc6_kernel=3, fc6_dilation=1)


def trunk() -> SplitBrainAlexNet:
    torch.manual_seed(0)
    return SplitBrainAlexNet(**TINY)


def test_each_half_sees_only_its_channels():
    net = trunk().eval()
    x = trunk_input(synthetic_batch(2, size=48)[0], "lab").requires_grad_(True)
    feats = net.forward_features(x, LAYERS)
    for name, f in feats.items():
        half = f.shape[1] // 2
        g_l = torch.autograd.grad(f[:, :half].sum(), x, retain_graph=True)[0]
        g_ab = torch.autograd.grad(f[:, half:].sum(), x, retain_graph=True)[0]
        assert g_l[:, 1:].abs().max() == 0 and g_l[:, :1].abs().max() > 0, name   # L half: L only
        assert g_ab[:, :1].abs().max() == 0 and g_ab[:, 1:].abs().max() > 0, name  # ab half: ab only


def test_features_have_the_full_widths_and_the_alexnet_geometry():
    x = torch.zeros(2, 3, 56, 56)
    ours = trunk().eval().forward_features(x, LAYERS)
    ref = AlexNet(in_channels=3, input_space="rgb", **TINY).eval().forward_features(x, LAYERS)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}


def test_config_rebuilds_the_same_class_with_deploy_geometry():
    net = trunk()
    assert net.config["_target_"] == TARGET == "ssl_bench.models.split_brain.SplitBrainAlexNet"
    args = {k: v for k, v in net.config.items() if k != "_target_"}
    rebuilt = SplitBrainAlexNet(**{**args, "geometry": "deploy"})
    assert rebuilt.state_dict().keys() == net.state_dict().keys()
    with pytest.raises(ValueError, match="backbone.input_space"):
        SplitBrainAlexNet(input_space="rgb")
    with pytest.raises(ValueError, match="even"):
        SplitBrainAlexNet(widths=(15, 32, 48, 48, 32))


def test_lightness_classes_are_bins_of_width_two():
    L = torch.tensor([0.0, 1.99, 2.0, 49.9, 50.0, 99.99, 100.0]).view(1, 1, 1, -1)
    assert lightness_bins(L, 50).view(-1).tolist() == [0, 0, 1, 24, 25, 49, 49]
    assert lightness_bins(L, 100).view(-1).tolist() == [0, 1, 2, 49, 50, 99, 99]


def module(**kw) -> SplitBrainPretext:
    return SplitBrainPretext(trunk(), ColorObjective(rebalance=False), lambda p: torch.optim.Adam(p, lr=2e-3),
                             channels_last=False, **kw)


def test_both_losses_fall_on_synthetic_images():
    model = module()
    images = synthetic_batch(8, size=48)[0]
    parts: list[dict[str, float]] = []

    def step(_: int) -> torch.Tensor:
        losses = model.losses(model(images))
        parts.append({k: v.item() for k, v in losses.items()})
        return losses["loss"]

    total = train_losses(step, torch.optim.Adam(model.parameters(), lr=2e-3), 15)
    assert total[-1] < 0.9 * total[0]
    assert parts[-1]["loss_ab"] < parts[0]["loss_ab"] and parts[-1]["loss_L"] < parts[0]["loss_L"]
    assert parts[0]["loss"] == pytest.approx(parts[0]["loss_ab"] + parts[0]["loss_L"], rel=1e-6)


def test_a_plain_alexnet_is_a_clear_error():
    with pytest.raises(ValueError, match=r"backbone\._target_=ssl_bench\.models\.split_brain\.SplitBrainAlexNet"):
        SplitBrainPretext(AlexNet(input_space="rgb", **TINY), ColorObjective(rebalance=False), lambda p: None)
    with pytest.raises(ValueError, match="rebalance"):
        SplitBrainPretext(trunk(), ColorObjective(), lambda p: None)  # rebalancing without a prior


def test_pretrains_and_is_probed_from_its_checkpoint(tiny_data, tmp_path, run_cli):
    out = tmp_path / "run"
    assert run_cli("pretrain", "experiment=demo_split_brain", *tiny_overrides(tiny_data, out, tmp_path / "cache"),
                   "pretext.objective.prior_images=32") == 0
    record = json.loads((out / "results.json").read_text())
    assert record["method"] == "split_brain" and record["trunk"]["input_space"] == "lab"
    for key in ("pretrain/loss", "pretrain/loss_ab", "pretrain/loss_L", "pretrain/val_L_error"):
        assert key in record["metrics"], key
    assert (out / "samples" / "final.png").is_file()
    opened = read_suite_checkpoint(out / "checkpoints" / "last.ckpt")
    assert isinstance(opened.load_trunk(), SplitBrainAlexNet)
    probe = probe_pretrained(run_cli, out, tiny_data, tmp_path)
    assert probe["method"] == "split_brain" and 0 <= probe["metrics"]["probe/conv5/top1"] <= 100
