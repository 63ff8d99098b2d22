"""ssl-bench colorize: the input's L is kept exactly, outputs are written, bad inputs are named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_TRUNK, save_suite_checkpoint
from PIL import Image

from ssl_bench import color
from ssl_bench.colorization.colorize import colorize_image, load_colorizer, net_input_size
from ssl_bench.models.alexnet import alexnet_small
from ssl_bench.models.checkpoint import CheckpointMismatchError
from ssl_bench.pretext.colorization import ColorizationPretext, ColorObjective
from ssl_bench.pretext.supervised import SupervisedPretext
from ssl_bench.runs.colorize import main as colorize_main


def colorizer_checkpoint(path: Path, kind: str = "classification") -> Path:
    torch.manual_seed(0)
    module = ColorizationPretext(alexnet_small(**TINY_TRUNK), ColorObjective(kind=kind, rebalance=False), None)
    with torch.no_grad():  # a head that predicts something colourful rather than near-uniform logits
        module.head.weight.mul_(20)
    return save_suite_checkpoint(module, path)


def supervised_checkpoint(path: Path, num_classes: int = 10) -> Path:
    torch.manual_seed(0)
    module = SupervisedPretext(alexnet_small(input_space="rgb", **TINY_TRUNK), None, num_classes)
    return save_suite_checkpoint(module, path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return colorizer_checkpoint(tmp_path_factory.mktemp("ckpt") / "color.ckpt")


def random_image(h: int, w: int, seed: int = 0, grey: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (1 if grey else 3, h, w), dtype=torch.uint8, generator=g)
    return img.expand(3, h, w).contiguous() if grey else img


@pytest.mark.parametrize("grey", [False, True])
@pytest.mark.parametrize("net_size", [None, 0, (40, 72)])
def test_round_trip_keeps_L_exactly_at_full_resolution(ckpt, grey, net_size):
    model = load_colorizer(ckpt)
    assert not model.training
    img = random_image(97, 143, grey=grey)
    rgb, lab = colorize_image(model, img, net_size=net_size)
    assert rgb.dtype == torch.uint8 and rgb.shape == (3, 97, 143) and lab.shape == (3, 97, 143)
    assert torch.equal(lab[0], color.l_from_uint8(img[None])[0, 0])
    assert lab[1:].abs().amax() > 1  # the network did colour it
    # the 8-bit output keeps the lightness up to rounding and gamut clipping (saturated colours)
    assert (color.rgb_to_lab(rgb[None])[0, 0] - lab[0]).abs().mean() < 5.0


def test_decoders_and_l2_model(ckpt, tmp_path):
    model = load_colorizer(ckpt)
    img = random_image(40, 50, seed=1)
    outs = {m: colorize_image(model, img, decode=m)[1] for m in ("annealed_mean", "mean", "mode")}
    assert not torch.equal(outs["mean"], outs["mode"])
    l2 = load_colorizer(colorizer_checkpoint(tmp_path / "l2.ckpt", "regression"))
    assert l2.objective.kind == "regression" and l2.source_meta["variant"] == "l2"
    _, lab = colorize_image(l2, img)
    assert torch.equal(lab[0], color.l_from_uint8(img[None])[0, 0])


def test_net_input_size():
    assert net_input_size(97, 143) == (256, 377)
    assert net_input_size(300, 200, 128) == (192, 128)
    assert net_input_size(97, 143, 0) == (97, 143)
    assert net_input_size(97, 143, (64, 64)) == (64, 64)


def write_png(path: Path, img: torch.Tensor) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)
    return path


def test_colorize_main_writes_both_files_and_skips_unreadable(ckpt, tmp_path, capsys):
    src = tmp_path / "in"
    write_png(src / "a.png", random_image(37, 45, seed=2))
    write_png(src / "sub" / "b.png", random_image(30, 30, seed=3, grey=True))
    (src / "broken.jpg").write_bytes(b"this is not a jpeg")
    out = tmp_path / "out"
    code = colorize_main([str(src), f"checkpoint={ckpt}", "decode=annealed_mean", "T=0.38",
                          "--out", str(out), "--size", "64"])
    err = capsys.readouterr()
    assert code == 0
    assert "broken.jpg" in err.err and "unreadable" in err.err
    assert "2 image(s) colorized, 1 skipped" in err.out
    for rel, (h, w) in {"a": (37, 45), "sub/b": (30, 30)}.items():
        col = np.asarray(Image.open(out / f"{rel}_colorized.png"))
        cmp_ = np.asarray(Image.open(out / f"{rel}_compare.png"))
        assert col.shape == (h, w, 3) and cmp_.shape == (h, 3 * w + 8, 3)
        # the compare strip's middle panel is the colorization, the last one the original
        assert np.array_equal(cmp_[:, w + 4:2 * w + 4], col)
        assert np.array_equal(cmp_[:, 2 * w + 8:], np.asarray(Image.open(src / f"{rel}.png").convert("RGB")))
    assert not list(out.rglob("*.tmp"))
    # without --out: beside the input; earlier outputs in a folder are not colorized again
    assert colorize_main([str(src / "a.png"), "--checkpoint", str(ckpt), "--size", "0"]) == 0
    assert (src / "a_colorized.png").is_file() and (src / "a_compare.png").is_file()
    capsys.readouterr()
    assert colorize_main([str(src), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o2"), "--size", "0"]) == 0
    assert "2 image(s) colorized" in capsys.readouterr().out


def test_only_unreadable_images_exit_nonzero(ckpt, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    assert colorize_main([str(bad), f"checkpoint={ckpt}"]) == 1
    assert "bad.png" in capsys.readouterr().err


def test_non_colorization_checkpoint_is_refused(tmp_path, capsys):
    sup = supervised_checkpoint(tmp_path / "sup.ckpt")
    img = write_png(tmp_path / "x.png", random_image(20, 20))
    assert colorize_main([str(img), f"checkpoint={sup}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "not a colorization model" in err and "supervised" in err and str(sup) in err
    with pytest.raises(CheckpointMismatchError, match="not a colorization model"):
        load_colorizer(sup)
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    assert colorize_main([str(img), f"checkpoint={tmp_path / 'foreign.ckpt'}"]) == 2
    assert "not written by ssl_bench" in capsys.readouterr().err
    assert colorize_main([str(img), f"checkpoint={tmp_path / 'missing.ckpt'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x_colorized.png").exists()
