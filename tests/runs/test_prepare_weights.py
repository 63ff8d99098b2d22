"""``ssl-bench prepare-weights``: per-unit, calibrated and plain preparation, the recorded gradient ratios,
and one-line user errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_TRUNK  # noqa: E402  (shared by the trunk tests)
from PIL import Image
from torch import nn

from ssl_bench.models.alexnet import LAYERS, AlexNet, alexnet_small
from ssl_bench.models.checkpoint import load_prepared
from ssl_bench.models.prepare import ColorInputTrunk, absorb_batch_norm
from ssl_bench.runs.prepare_weights import main as prepare_weights_main

pytestmark = pytest.mark.usefixtures("one_thread")
# deploy geometry at 99 px with a 2x2 fc6: 1x1 fc6/fc7 maps, as the faithful net's 6x6 fc6 at 227
SMALL = dict(widths=(8, 16, 16, 16, 16), fc_channels=32, fc6_kernel=2)


def trained_looking(seed: int = 0, **kwargs) -> AlexNet:
    """A BN trunk whose running statistics come from data and are then perturbed."""
    torch.manual_seed(seed)
    trunk = alexnet_small(**kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        trunk.train()
        for m in trunk.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        trunk(20 * torch.randn(8, 1, 64, 64, generator=g))
        for m in trunk.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(0.3 * m.running_var.sqrt() * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.mul_(torch.empty(m.running_var.shape).uniform_(0.5, 2.0, generator=g))
    return trunk.eval()


def suite_checkpoint(path, trunk: AlexNet) -> None:
    """A checkpoint in the suite's format, as the pretext modules write it."""
    torch.save({"state_dict": {"trunk." + k: v for k, v in trunk.state_dict().items()},
                "ssl_bench": {"trunk": trunk.config, "input_space": trunk.input_space,
                              "pretext": "colorization", "variant": "full"}}, path)


def image_folder(root, count: int = 5) -> str:
    data = root / "imgs" / "cls"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (48 + 8 * i, 120, 3), dtype=np.uint8)).save(data / f"{i}.png")
    return str(root / "imgs")


def has_bn(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def lab(n: int = 2, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    """N x 3 (L - 50, a, b) inputs."""
    return torch.cat([20 * torch.randn(n, 1, size, size, generator=g),
                      40 * torch.randn(n, 2, size, size, generator=g)], dim=1)


def test_per_unit_and_plain_preparation(tmp_path, capsys):
    trunk = trained_looking()
    ckpt = tmp_path / "last.ckpt"
    suite_checkpoint(ckpt, trunk)
    args = ["--rescale-data", image_folder(tmp_path), "--rescale-images", "4", "--size", "64",
            "--calibration-draws", "8"]

    assert prepare_weights_main([str(ckpt), "--out", str(tmp_path / "gray.pt"), *args]) == 0  # per_unit
    assert prepare_weights_main([str(ckpt), "--out", str(tmp_path / "color.pt"), "--mode", "color",
                                 "--rescale", "per_unit", *args]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summaries = [line for line in out if line.startswith("ssl-bench:")]
    assert len(summaries) == 2 and "mode color" in summaries[1] and "per_unit rescaling on 4 images" in summaries[1]
    assert sum("before" in line and "after" in line for line in out) == 2 * (len(LAYERS) + 1)
    gray, grec = load_prepared(tmp_path / "gray.pt")
    color, crec = load_prepared(tmp_path / "color.pt")
    assert grec["mode"] == "gray" and crec["mode"] == "color" and isinstance(color, ColorInputTrunk)
    meta = crec["meta"]
    assert meta["rescale"] == "per_unit" and meta["rescale_images"] == 4 and meta["absorbed_bn"] is True
    assert set(meta["ratios_before"]) == set(meta["ratios_after"]) == {f"{n}.0" for n in LAYERS}
    assert not has_bn(gray) and not has_bn(color)
    x = lab()
    with torch.no_grad():
        assert torch.allclose(color(x), gray(x[:, :1]), atol=1e-6)
        assert not torch.allclose(gray(x[:, :1]), absorb_batch_norm(trunk)(x[:, :1]))
    # without rescaling and without absorption: the trunk itself, no ratios measured
    assert prepare_weights_main([str(ckpt), "--out", str(tmp_path / "raw.pt"), "--no-absorb"]) == 0
    raw, rrec = load_prepared(tmp_path / "raw.pt")
    assert has_bn(raw) and rrec["meta"]["rescale"] == "none" and rrec["meta"]["ratios_before"] is None
    with torch.no_grad():
        assert torch.equal(raw(x[:, :1]), trunk(x[:, :1]))
    capsys.readouterr()


def test_calibrated_preparation_in_the_deploy_geometry(tmp_path, capsys):
    trunk = trained_looking(**SMALL)  # recorded in the train geometry
    ckpt = tmp_path / "last.ckpt"
    suite_checkpoint(ckpt, trunk)
    folder = image_folder(tmp_path, 6)
    out = tmp_path / "calibrated.pt"
    assert prepare_weights_main([str(ckpt), "--out", str(out), "--rescale", "calibrate", "--rescale-data", folder,
                                 "--size", "99", "--geometry", "deploy", "--calibration-draws", "64"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "calibrate rescaling on 6 images" in lines[0]  # fewer images than the default 80: all of them
    prepared, record = load_prepared(out)
    meta = record["meta"]
    assert prepared.geometry == "deploy" and meta["geometry"] == "deploy" and not has_bn(prepared)
    assert meta["rescale"] == "calibrate" and meta["calibration"]["draws"] == 64
    before, after = meta["ratios_before"], meta["ratios_after"]
    spread = {k: max(v.values()) / min(v.values()) for k, v in (("before", before), ("after", after))}
    assert spread["before"] > 2 and spread["after"] < 1.3
    assert lines[-1].split() == ["spread", "(max/min)", "before", f"{spread['before']:.3g}", "after",
                                 f"{spread['after']:.3g}"]
    # whole layers scaled: not the absorbed weights, the same filter directions
    absorbed = absorb_batch_norm(trunk)
    for name in LAYERS:
        w, w0 = getattr(prepared, name)[0].weight, getattr(absorbed, name)[0].weight
        assert not torch.allclose(w, w0, rtol=1e-3), name
        assert torch.nn.functional.cosine_similarity(w.flatten(), w0.flatten(), dim=0) > 1 - 1e-5, name


def test_prepare_weights_cli_user_errors(tmp_path, capsys):
    rgb = tmp_path / "rgb.ckpt"
    suite_checkpoint(rgb, alexnet_small(input_space="rgb", **TINY_TRUNK))
    out = ["--out", str(tmp_path / "o.pt")]
    assert prepare_weights_main([str(rgb), *out, "--mode", "color"]) == 2
    err = capsys.readouterr().err
    assert "finetune.mode" in err and "'rgb'" in err and "'L'" in err and len(err.strip().splitlines()) == 1
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    assert prepare_weights_main([str(other), *out]) == 2
    assert "not written by ssl_bench" in capsys.readouterr().err
    assert prepare_weights_main([str(tmp_path / "missing.ckpt"), *out]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert prepare_weights_main([str(rgb), *out, "--rescale-images", "3"]) == 2
    assert "--rescale-data" in capsys.readouterr().err
    assert prepare_weights_main([str(rgb), *out, "--rescale-data", str(tmp_path / "nothing")]) == 2
    assert "--rescale-data" in capsys.readouterr().err
    assert prepare_weights_main([str(rgb), *out, "--rescale", "calibrate"]) == 2
    assert "--rescale calibrate needs --rescale-data" in capsys.readouterr().err
    assert prepare_weights_main([str(rgb), *out, "--rescale", "none", "--rescale-data", str(tmp_path)]) == 2
    assert "need a rescaling" in capsys.readouterr().err
    assert prepare_weights_main([str(rgb), *out, "--rescale-data", image_folder(tmp_path), "--size", "64",
                                 "--geometry", "deploy"]) == 2  # a 6x6 fc6 needs a 6x6 pool5 map
    err = capsys.readouterr().err
    assert "--size 64" in err and "deploy geometry" in err and len(err.strip().splitlines()) == 1
    assert prepare_weights_main([str(rgb), *out, "--mode", "grey"]) == 2
    assert prepare_weights_main([str(rgb), *out, "--rescale", "magic"]) == 2
    assert not (tmp_path / "o.pt").exists()
