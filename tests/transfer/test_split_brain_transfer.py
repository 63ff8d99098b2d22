"""The split-brain trunk on the VOC tasks: its layers found in both halves, its fc6/fc7 as one
block-diagonal box head, and a paper-recipe classification run from a split-brain checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.models.layers import LAYERS
from ssl_bench.models.prepare import fc_layers, prepare_for_transfer
from ssl_bench.models.split_brain import SplitBrainAlexNet
from ssl_bench.transfer.voc_cls import VOCClassificationTask

pytestmark = pytest.mark.usefixtures("one_thread")
# deploy geometry with a 1x1 fc6: 1x1 fc6/fc7 maps on 67 px crops, as the faithful net's 6x6 fc6 at 227
TINY = dict(widths=(16, 32, 48, 48, 32), fc_channels=64, fc6_kernel=1)


def trained_looking(**kwargs) -> SplitBrainAlexNet:
    """A split-brain trunk whose batch norms hold running statistics from data (then perturbed)."""
    torch.manual_seed(0)
    trunk = SplitBrainAlexNet(**{**TINY, **kwargs})
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        trunk.train()
        for m in trunk.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        trunk(torch.cat([20 * torch.randn(8, 1, 67, 67, generator=g), 30 * torch.randn(8, 2, 67, 67, generator=g)], 1))
        for m in trunk.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(0.3 * m.running_var.sqrt() * torch.randn(m.running_mean.shape, generator=g))
    return trunk.eval()


def test_fc_layers_are_block_diagonal_and_compute_both_halves():
    trunk = prepare_for_transfer(trained_looking(fc6_kernel=3), rescale="none")
    fc6, fc7 = fc_layers(trunk)
    half = trunk.config["widths"][-1] // 2
    roi = torch.randn(5, 2 * half, 3, 3)  # an RoI-pooled conv5 grid, the L half's channels first
    expected = []
    for module, part in ((trunk.l_half, roi[:, :half]), (trunk.ab_half, roi[:, half:])):
        h = F.relu(F.conv2d(part, module.fc6[0].weight, module.fc6[0].bias)).flatten(1)
        expected.append(F.relu(F.linear(h, module.fc7[0].weight.flatten(1), module.fc7[0].bias)))
    with torch.no_grad():
        assert torch.allclose(fc7(F.relu(fc6(roi.flatten(1)))).relu(), torch.cat(expected, 1), atol=1e-5)
    assert fc6.weight.shape == (64, 2 * half * 9) and fc7.weight.shape == (64, 64)
    assert not fc6.weight[:32, half * 9:].any() and not fc7.weight[32:, :32].any()


@pytest.mark.parametrize("train_from", ["fc6", "conv1"])
def test_classifier_trains_both_halves_and_reads_the_concatenated_fc7(train_from):
    trunk = prepare_for_transfer(trained_looking(geometry="deploy"), rescale="none")
    task = VOCClassificationTask(trunk, lambda p: torch.optim.SGD(p, lr=0.1), train_from=train_from)
    assert task.fc8.in_features == 64
    trainable = {n for n, p in trunk.named_parameters() if p.requires_grad}
    for half in ("l_half", "ab_half"):
        for layer in LAYERS:
            learns = train_from == "conv1" or layer in ("fc6", "fc7")
            assert (f"{half}.{layer}.0.weight" in trainable) == learns, (half, layer)
    images = torch.randint(0, 256, (2, 3, 67, 67), dtype=torch.uint8)
    task(images).sum().backward()  # every trainable weight of both halves gets a gradient
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in trunk.named_parameters() if n in trainable)


def split_brain_checkpoint(path) -> None:
    trunk = trained_looking()
    torch.save({"state_dict": {"trunk." + k: v for k, v in trunk.state_dict().items()},
                "ssl_bench": {"trunk": trunk.config, "input_space": "lab", "pretext": "split_brain",
                              "variant": None}}, path)


def test_paper_classification_runs_from_a_split_brain_checkpoint(tmp_path, run_cli):
    ckpt = tmp_path / "split.ckpt"
    split_brain_checkpoint(ckpt)
    out = tmp_path / "ft"
    assert run_cli("finetune", "task=voc_cls", "protocol=paper", f"checkpoint={ckpt}", "recipe.train_layers=all",
                   "recipe.max_steps=2", "recipe.crop_size=67", "recipe.batch_size=4", "voc_root=synthetic",
                   "synthetic_voc.num_trainval=8", "synthetic_voc.num_test=4", "synthetic_voc.image_size=64",
                   "task.datamodule.num_workers=0", "task.datamodule.test_batch_size=2", "finetune.rescale_images=4",
                   "finetune.rescale_size=67", f"paths.data_dir={tmp_path / 'data'}",
                   f"hydra.run.dir={out}", "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0") == 0
    record = json.loads((out / "results.json").read_text())
    assert record["method"] == "split_brain" and record["trunk"]["input_space"] == "lab"
    assert record["trunk"]["rescale"] == "calibrate" and record["trunk"]["geometry"] == "deploy"
    assert 0 <= record["metrics"]["voc07/cls_all/mAP"] <= 100
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert state["fc8.weight"].shape == (20, 64)
    assert {"trunk.l_half.conv1.0.weight", "trunk.ab_half.conv1.0.weight"} <= set(state)
    assert not any("running_mean" in k for k in state)  # batch norm absorbed


# The spread after calibration, measured with a random top other than the calibration's: within 10% in
# the train geometry; in the deploy geometry on 67 px crops (1x1 fc maps) the two halves stay about 20%
# apart (measured 1.21), a known limit written in docs/transfer.md ("Split-brain trunks").
@pytest.mark.parametrize("geometry, limit", [("train", 1.10), ("deploy", 1.25)])
def test_prepare_weights_calibrates_a_split_brain_checkpoint(tmp_path, capsys, geometry, limit):
    """The command end to end: the file rebuilds the split net, its recorded ratios (its own random top,
    measured apart from the calibration's; the independent check is in tests/models/test_prepare.py) are
    nearly equal after and far apart before."""
    from PIL import Image

    from ssl_bench.models.checkpoint import load_prepared
    from ssl_bench.runs.prepare_weights import main as prepare_weights_main
    split_brain_checkpoint(tmp_path / "split.ckpt")
    images = tmp_path / "imgs"
    images.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(6):
        pixels = torch.randint(0, 256, (80, 90, 3), generator=g, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(images / f"{i}.png")
    out = tmp_path / "prepared.pt"
    assert prepare_weights_main([str(tmp_path / "split.ckpt"), "--out", str(out), "--rescale", "calibrate",
                                 "--rescale-data", str(images), "--size", "67", "--geometry", geometry,
                                 "--calibration-draws", "256"]) == 0
    assert "mode lab" in capsys.readouterr().out
    module, record = load_prepared(out)
    assert isinstance(module, SplitBrainAlexNet) and record["mode"] == "lab" and record["input_space"] == "lab"
    before, after = record["meta"]["ratios_before"], record["meta"]["ratios_after"]
    assert set(after) == {f"{h}.{n}.0" for h in ("l_half", "ab_half") for n in LAYERS}
    assert max(before.values()) / min(before.values()) > 2 and max(after.values()) / min(after.values()) < limit
