"""The colorization gallery (paper layout, HTML + PNGs) and the ab prior / rebalancing-weights figure."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import save_suite_checkpoint
from PIL import Image

from ssl_bench import color
from ssl_bench.colorization.prior_figure import prior_and_weights, prior_from_checkpoint, prior_from_weights
from ssl_bench.models.alexnet import alexnet_small
from ssl_bench.pretext.colorization import ColorizationPretext, ColorObjective
from ssl_bench.runs.gallery import main as gallery_main
from ssl_bench.runs.prior_figure import main as prior_figure_main

OBJECTIVES = {"l2": ColorObjective(kind="regression"), "class": ColorObjective(rebalance=False),
              "full": ColorObjective()}


def _image(seed: int, h: int, w: int) -> np.ndarray:
    """A smooth colourful H x W x 3 uint8 picture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [np.sin(2 * np.pi * (rng.uniform(0.5, 2) * x + rng.uniform(0.5, 2) * y) + rng.uniform(0, 6))
             for _ in range(3)]
    return np.clip(127.5 + 120 * np.stack(chans, -1), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("imgs")
    Image.fromarray(_image(0, 200, 300)).save(d / "a.png")
    Image.fromarray(_image(1, 320, 260)).save(d / "b.jpg", quality=95)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.fromarray(_image(2, 256, 256)).save(d / "c.png")
    Image.fromarray(_image(3, 180, 180)).save(d / "d.png")
    return d


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    prior = torch.linspace(1.0, 3.0, color.NUM_BINS)
    prior = prior / prior.sum()
    out = {}
    for key, objective in OBJECTIVES.items():
        torch.manual_seed(len(out))
        m = ColorizationPretext(alexnet_small(widths=(16, 32, 48, 48, 32), fc_channels=64), objective,
                                optimizer=lambda p: None, prior=prior if objective.rebalance else None)
        out[key] = save_suite_checkpoint(m, d / f"{key}.ckpt")
    return out


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []  # img src per body row
        self.captions: list[str] = []
        self.text: list[str] = []
        self._in_th = False
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and a.get("class") == "image":
            self.rows.append([])
        elif tag == "tr" and a.get("class") == "caption":
            self._in_caption = True
        elif tag == "th" and self._in_caption:
            self._in_th = True
            self.captions.append("")
        elif tag == "img" and self.rows:
            self.rows[-1].append(a["src"])

    def handle_endtag(self, tag):
        if tag == "th":
            self._in_th = False
        elif tag == "tr":
            self._in_caption = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_th:
            self.captions[-1] += data


def _read_png(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)


def test_gallery_paper_layout(images_dir, checkpoints, tmp_path, capsys):
    out = tmp_path / "gal"
    code = gallery_main(["--data", str(images_dir), "--l2", str(checkpoints["l2"]),
                         "--class", str(checkpoints["class"]), "--full", str(checkpoints["full"]),
                         "--num", "3", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "broken.png" in err  # the unreadable file is named
    page = _Page()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    assert "broken.png" in "".join(page.text)
    # the first 3 readable images in sorted order (broken.png skipped, d.png beyond --num)
    assert len(page.rows) == 3
    assert page.captions[0].startswith("input")
    assert any("colorization/l2" in c for c in page.captions)
    assert any("colorization/class" in c for c in page.captions)
    assert any("colorization/full" in c for c in page.captions)
    assert "ground truth" in page.captions[-1]
    assert len(page.captions) == 5
    for row in page.rows:
        assert len(row) == 5
        pics = [_read_png(out / src) for src in row]
        assert all(p.shape == (3, 256, 256) for p in pics)
        grey, truth = color.rgb_to_lab(pics[0][None]), color.rgb_to_lab(pics[-1][None])
        assert grey[:, 1:].abs().max() < 0.5  # a = b = 0
        assert (grey[:, :1] - truth[:, :1]).abs().max() < 0.6  # same L up to uint8 rounding
        assert truth[:, 1:].abs().mean() > 5  # the ground truth is in colour
    # the colorized cells keep the input's lightness (L at full resolution, ab upsampled)
    for src in page.rows[0][1:4]:
        L = color.rgb_to_lab(_read_png(out / src)[None])[:, :1]
        L_truth = color.rgb_to_lab(_read_png(out / page.rows[0][-1])[None])[:, :1]
        assert (L - L_truth).abs().mean() < 2.0
    assert not list(out.glob(".*tmp"))  # no temp files left behind


def test_gallery_any_subset_of_columns_and_stale_cells(images_dir, checkpoints, tmp_path, capsys):
    out = tmp_path / "gal"
    assert gallery_main(["--data", str(images_dir / "a.png"), str(images_dir / "c.png"),
                         "--full", str(checkpoints["full"]), "--l2", str(checkpoints["l2"]),
                         "--out", str(out), "--decode", "mode"]) == 0
    page = _Page()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    assert len(page.rows) == 2 and all(len(r) == 4 for r in page.rows)
    # columns in the paper's order whatever the order of the flags
    assert "colorization/l2" in page.captions[1] and "colorization/full" in page.captions[2]
    assert gallery_main(["--data", str(images_dir / "d.png"), "--class", str(checkpoints["class"]),
                         "--out", str(out)]) == 0
    page = _Page()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    assert len(page.rows) == 1 and len(page.rows[0]) == 3
    assert sorted(p.name for p in out.glob("*.png")) == sorted(page.rows[0])  # old cells removed


def test_gallery_bad_input(images_dir, checkpoints, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert gallery_main(["--data", str(empty), "--l2", str(checkpoints["l2"]), "--out", str(tmp_path / "o")]) == 2
    assert str(empty) in capsys.readouterr().err
    assert gallery_main(["--data", str(tmp_path / "missing"), "--l2", str(checkpoints["l2"])]) == 2
    assert "missing" in capsys.readouterr().err
    assert gallery_main(["--data", str(images_dir / "broken.png"), "--l2", str(checkpoints["l2"])]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert gallery_main(["--data", str(images_dir)]) == 2  # no checkpoint at all
    assert "--l2" in capsys.readouterr().err
    assert gallery_main(["--data", str(images_dir), "--l2", str(tmp_path / "nope.ckpt")]) == 2
    assert "nope.ckpt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _weights_ok(data) -> None:
    assert data.prior.shape == data.weights.shape == (color.NUM_BINS,)
    assert float(data.prior.sum()) == pytest.approx(1.0, abs=1e-9)
    assert float((data.prior * data.weights).sum()) == pytest.approx(1.0, abs=1e-6)
    assert (data.weights > 0).all()


def test_prior_and_weights_normalisation(images_dir):
    imgs = [torch.from_numpy(_image(i, 40 + i, 50)).permute(2, 0, 1).contiguous() for i in range(3)]
    data = prior_and_weights(imgs, lam=0.5, sigma=5.0)
    _weights_ok(data)
    assert data.num_images == 3 and data.counts.sum() == sum(i.shape[1] * i.shape[2] for i in imgs)
    raw = prior_and_weights(imgs, lam=0.3, sigma=0.0)
    _weights_ok(raw)
    assert torch.allclose(raw.prior, raw.counts / raw.counts.sum())
    # rare colours get larger weights than common ones
    common, rare = raw.prior.argmax(), (raw.prior > 0).nonzero()[raw.prior[raw.prior > 0].argmin()]
    assert raw.weights[rare] > raw.weights[common]
    # the prior comes back from the weights alone (the checkpoint route)
    assert torch.allclose(prior_from_weights(data.weights * 3.0, 0.5), data.prior, atol=1e-9)
    with pytest.raises(ValueError, match="no pixels"):
        prior_and_weights([], 0.5, 5.0)


def test_prior_figure_png(images_dir, checkpoints, tmp_path, capsys):
    out = tmp_path / "fig" / "prior.png"
    assert prior_figure_main(["--data", str(images_dir), "--out", str(out), "--max-images", "4"]) == 0
    assert "broken.png" in capsys.readouterr().err
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 800 and 250 < im.height < im.width
        assert np.asarray(im.convert("RGB")).std() > 10  # not a blank canvas
    # from a checkpoint's stored bin weights
    out2 = tmp_path / "prior_ckpt.png"
    assert prior_figure_main(["--checkpoint", str(checkpoints["full"]), "--out", str(out2)]) == 0
    with Image.open(out2) as im:
        assert im.format == "PNG"
    data = prior_from_checkpoint(checkpoints["full"], 0.5)
    _weights_ok(data)
    stored = torch.load(checkpoints["full"], weights_only=False)["state_dict"]["bin_weights"]
    assert torch.allclose(data.weights.float(), stored, rtol=1e-4)
    # a checkpoint trained without rebalancing has nothing to show
    assert prior_figure_main(["--checkpoint", str(checkpoints["class"]), "--out", str(tmp_path / "x.png")]) == 2
    assert "rebalancing" in capsys.readouterr().err


def test_prior_figure_bad_input(tmp_path, capsys):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    assert prior_figure_main(["--data", str(empty), "--out", str(tmp_path / "p.png")]) == 2
    assert str(empty) in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()
    assert prior_figure_main(["--out", str(tmp_path / "p.png")]) == 2  # neither --data nor --checkpoint
