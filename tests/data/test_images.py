"""Decoding image files (ssl_bench.data.images) and the datamodule's handling of bad files, on files
written here with PIL / numpy."""

from __future__ import annotations

import errno
import os
import shutil
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import CONF, tiny_overrides
from omegaconf import OmegaConf
from PIL import Image

from ssl_bench.data import images as im
from ssl_bench.data.datamodule import ImageDataModule


def gradient(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 H x W x 3: smooth ramps plus a seeded offset per channel (distinct images, JPEG-friendly)."""
    y, x = np.mgrid[0:h, 0:w]
    off = np.random.default_rng(seed).integers(0, 128, 3)
    chans = [(x * 255 // max(w - 1, 1) + off[0]) % 256, (y * 255 // max(h - 1, 1) + off[1]) % 256,
             ((x + y) * 127 // max(h + w - 2, 1) + off[2]) % 256]
    return np.stack(chans, axis=-1).astype(np.uint8)


def save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def chw(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def truncated_jpeg(path: Path) -> Path:
    save(path, gradient(64, 64), quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def no_retry_delay(monkeypatch):
    monkeypatch.setattr(im, "IO_RETRY_DELAY_S", 0.0)


def image_tree(root: Path, per_class: int = 6, size: int = 64) -> Path:
    """ImageFolder tree train/{a,b}, val/{a,b} of distinct PNG gradients."""
    for split, n in (("train", per_class), ("val", 2)):
        for c, name in enumerate("ab"):
            for i in range(n):
                save(root / split / name / f"img{i}.png", gradient(size, size, seed=100 * c + i))
    return root


# ------------------------------------------------------------------ 1: decode errors vs I/O errors

def test_truncated_jpeg_is_skipped_and_named(tmp_path):
    bad = truncated_jpeg(tmp_path / "cut.jpg")
    with pytest.raises(OSError) as raw:  # what PIL itself raises: a plain OSError without errno
        with Image.open(bad) as img:
            img.load()
    assert raw.value.errno is None
    with pytest.raises(im.UndecodableImage, match="cut.jpg"):
        im.decode_rgb(bad)
    good = save(tmp_path / "ok.png", gradient(8, 8))
    ds = im.ImageDataset([(bad, 0), (good, 1)])
    batch = im.collate_skip([ds[0], ds[1]])
    assert batch["skipped"] == [str(bad)] and batch["label"].tolist() == [1]
    assert torch.equal(batch["image"][0], chw(gradient(8, 8)))
    counter = im.SkipCounter()
    with pytest.warns(UserWarning, match="cut.jpg"):
        counter.add(batch["skipped"])
    assert counter.count == 1 and counter.names == [str(bad)]


@pytest.mark.parametrize("code", [errno.EIO, errno.EACCES, errno.EMFILE, errno.ESTALE])
def test_io_error_is_retried_then_an_error_naming_the_file(tmp_path, monkeypatch, no_retry_delay, code):
    path = save(tmp_path / "x.png", gradient(8, 8))
    calls = []

    def failing(fp, *a, **k):
        calls.append(fp)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(PIL.Image, "open", failing)
    with pytest.raises(im.ImageReadError, match=r"x\.png") as e:
        im.ImageDataset([(path, 0)])[0]
    assert e.value.errno == code and len(calls) == im.IO_ATTEMPTS
    assert not isinstance(e.value, im.DECODE_ERRORS)  # loaders do not skip it


def test_transient_io_error_is_retried(tmp_path, monkeypatch, no_retry_delay):
    path = save(tmp_path / "x.png", gradient(9, 7))
    real, calls = PIL.Image.open, []

    def flaky(fp, *a, **k):
        calls.append(fp)
        if len(calls) == 1:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(fp, *a, **k)

    monkeypatch.setattr(PIL.Image, "open", flaky)
    assert torch.equal(im.decode_rgb(path), chw(gradient(9, 7))) and len(calls) == 2


def test_encoded_reader_does_not_skip_io_errors(tmp_path, monkeypatch, no_retry_delay):
    from ssl_bench.data.decoded_cache import EncodedImages
    path = save(tmp_path / "y.jpg", gradient(16, 16))
    ds = EncodedImages([(path, 3)])
    (data, name), label = ds[0]
    assert data.tobytes() == path.read_bytes() and name == str(path) and label == 3

    def eio(self):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(Path, "read_bytes", eio)
    with pytest.raises(im.ImageReadError, match=r"y\.jpg"):
        ds[0]


def test_decompression_bomb_is_skipped(tmp_path, monkeypatch):
    path = save(tmp_path / "big.png", gradient(40, 40))
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)  # 1600 px > 2 x 100: PIL's error, not a warning
    assert im.ImageDataset([(path, 0)])[0] == (None, str(path))


# --------------------------------------------------------------- 2: data.max_skipped_fraction

def broken_tree(tmp_path: Path, n_broken: int) -> Path:
    root = image_tree(tmp_path / "data", per_class=9)
    for i in range(n_broken):
        (root / "train" / "a" / f"broken{i}.jpg").write_bytes(b"not an image")
    return root


def run_train_epochs(dm: ImageDataModule, epochs: int) -> None:
    """What the trainer does with each train batch: the batch goes through on_after_batch_transfer."""
    dm.trainer = SimpleNamespace(training=True)  # the hook only asks whether it is training
    for _ in range(epochs):
        for batch in dm.train_dataloader():
            dm.on_after_batch_transfer(batch, 0)


def test_skipped_fraction_ceiling_stops_the_run_naming_key_and_files(tmp_path):
    root = broken_tree(tmp_path, n_broken=2)  # 2 of 20 train files = 10 %
    dm = ImageDataModule(str(root), crop_size=56, load_size=None, batch_size=5, num_workers=0)
    dm.setup()
    with pytest.raises(im.SkippedImagesError) as e:
        run_train_epochs(dm, 1)
    msg = str(e.value)
    assert "data.max_skipped_fraction=0.05" in msg and "2 of the 20 train images" in msg
    assert str(root / "train" / "a" / "broken0.jpg") in msg and str(root / "train" / "a" / "broken1.jpg") in msg
    # at a higher ceiling the run goes on; each file counts once however many epochs meet it
    ok = ImageDataModule(str(root), crop_size=56, load_size=None, batch_size=5, num_workers=0,
                         max_skipped_fraction=0.1)
    ok.setup()
    run_train_epochs(ok, 2)
    assert ok.skipped_by_split == {"train": 2, "val": 0}


def test_skipped_fraction_is_checked_and_configured():
    with pytest.raises(ValueError, match="data.max_skipped_fraction"):
        ImageDataModule("x", max_skipped_fraction=1.5)
    for f in sorted((CONF / "data").glob("*.yaml")):
        assert OmegaConf.load(f).max_skipped_fraction == 0.05, f


@pytest.mark.slow
def test_pretraining_stops_on_too_many_broken_files(tiny_data, tmp_path, run_cli, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    cls = sorted(p.name for p in (data / "train").iterdir())[0]
    for i in range(6):  # 6 of 86 = 7 %
        (data / "train" / cls / f"broken{i}.jpg").write_bytes(b"not a jpeg")
    code = run_cli("pretrain", *tiny_overrides(data, tmp_path / "run", tmp_path / "cache"))
    err = capsys.readouterr().err
    assert code == 2 and "data.max_skipped_fraction" in err and "broken" in err


# ------------------------------------------------------------------ 4: init on broken first files

def test_first_train_images_skip_leading_broken_files(tmp_path, one_thread):
    from ssl_bench.models.alexnet import alexnet_small
    from ssl_bench.models.init import KraehenbuehlInit, apply_init
    root = image_tree(tmp_path / "data", per_class=4)
    for i in range(6):  # sorted first: the first batches hold nothing decodable
        (root / "train" / "a" / f"000_broken{i}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    dm = ImageDataModule(str(root), crop_size=56, load_size=None, batch_size=3, num_workers=0)
    dm.setup()
    got = dm.first_train_images(6)
    want = [gradient(64, 64, seed=s)[4:60, 4:60] for s in (0, 1, 2, 3, 100, 101)]  # centre 56 of 64
    assert torch.equal(got, torch.stack([chw(w) for w in want]))
    torch.manual_seed(0)
    trunk = alexnet_small(input_space="rgb", widths=(16, 32, 48, 48, 32), fc_channels=64)
    report = apply_init(trunk, KraehenbuehlInit(kmeans=False, calibrate=False, num_images=6), dm.first_train_images)
    assert report["name"] == "kraehenbuehl"
    assert all(torch.isfinite(v).all() for v in trunk.state_dict().values())


# -------------------------------------------------------------------------- 5: images below the crop

def test_tiny_image_is_resized_up_in_the_train_loader(tmp_path):
    root = image_tree(tmp_path / "data", per_class=4)
    tiny = np.zeros((8, 8, 3), np.uint8)
    tiny[:, :4] = (250, 10, 10)
    tiny[:, 4:] = (10, 10, 250)
    (root / "train" / "c").mkdir()
    save(root / "train" / "c" / "tiny.png", tiny)
    save(root / "val" / "c" / "v.png", gradient(64, 64))
    dm = ImageDataModule(str(root), crop_size=56, load_size=None, batch_size=3, num_workers=0)
    dm.setup()
    seen, tiny_out = 0, []
    for batch in dm.train_dataloader():
        assert batch["image"].shape[1:] == (3, 56, 56) and batch["skipped"] == []
        seen += batch["image"].shape[0]
        tiny_out += [x for x, lab in zip(batch["image"], batch["label"]) if lab == 2]
    assert seen == 9 and len(tiny_out) == 1
    # reference: PIL's bilinear upscale of the 8 x 8 image to the crop (the whole crop), maybe mirrored
    ref = chw(np.asarray(Image.fromarray(tiny).resize((56, 56), Image.BILINEAR))).int()
    out = tiny_out[0].int()
    assert min((out - ref).abs().max(), (out.flip(-1) - ref).abs().max()) <= 2


# ------------------------------------------------------------------------------- 6: 16-bit images

def png16_rgb(path: Path, arr: np.ndarray) -> Path:
    """A 48-bit RGB PNG written by hand (PIL cannot write one): IHDR, one IDAT, IEND."""
    h, w, _ = arr.shape
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 300).round().astype(np.uint16), (4, 1))
    path = tmp_path / "g16.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as img:
        assert img.mode in ("I;16", "I")  # really 16-bit on disk
    want = np.repeat((ramp >> 8).astype(np.uint8)[..., None], 3, axis=2)
    assert torch.equal(im.decode_rgb(path), chw(want))
    # the same values as a 32-bit "I" image (what older Pillows give for 16-bit PNGs)
    assert np.array_equal(im.rgb_array(Image.fromarray(ramp.astype(np.int32))), want)


def test_16bit_rgb_png_is_scaled(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, (5, 7, 3)).astype(np.uint16)
    got = im.decode_rgb(png16_rgb(tmp_path / "rgb16.png", arr))
    assert torch.equal(got, chw((arr >> 8).astype(np.uint8)))


# ------------------------------------------------------------------------------ 7: odd files

def test_rgba_png_drops_alpha(tmp_path):
    rgb = gradient(10, 12)
    alpha = np.linspace(0, 255, 120).astype(np.uint8).reshape(10, 12, 1)
    path = save(tmp_path / "a.png", np.concatenate([rgb, alpha], axis=2))
    assert torch.equal(im.decode_rgb(path), chw(rgb))


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    # 16 px blocks of pure inks: JPEG keeps flat blocks nearly exact
    inks = {(255, 0, 0, 0): (0, 255, 255), (0, 255, 0, 0): (255, 0, 255), (0, 0, 255, 0): (255, 255, 0),
            (0, 0, 0, 255): (0, 0, 0), (0, 0, 0, 0): (255, 255, 255)}
    cmyk = np.concatenate([np.full((16, 16, 4), k, np.uint8) for k in inks], axis=1)
    path = tmp_path / "cmyk.jpg"
    Image.frombytes("CMYK", (80, 16), cmyk.tobytes()).save(path, quality=95)
    want = np.concatenate([np.full((16, 16, 3), v, np.uint8) for v in inks.values()], axis=1)
    got = im.decode_rgb(path)
    assert got.shape == (3, 16, 80)
    assert (got.int() - chw(want).int()).abs().max() <= 12


def test_grey_jpeg_becomes_three_equal_channels(tmp_path):
    grey = gradient(24, 40)[..., 0]
    path = save(tmp_path / "g.jpg", grey, quality=100)
    got = im.decode_rgb(path)
    assert got.shape == (3, 24, 40) and torch.equal(got[0], got[1]) and torch.equal(got[0], got[2])
    assert (got[0].int() - torch.from_numpy(grey).int()).abs().max() <= 3


@pytest.mark.parametrize("load_size", [None, 64])
def test_one_pixel_image(tmp_path, load_size):
    path = save(tmp_path / "p.png", np.array([[[10, 200, 30]]], np.uint8))
    assert im.decode_rgb(path).tolist() == [[[10]], [[200]], [[30]]]
    for t in (im.train_transform, im.eval_transform):
        img, _ = im.ImageDataset([(path, 0)], t(56, load_size))[0]
        assert img.shape == (3, 56, 56)
        assert torch.equal(img, torch.tensor([10, 200, 30], dtype=torch.uint8)[:, None, None].expand(3, 56, 56))


def test_text_file_named_jpg_is_skipped_and_counted(tmp_path):
    txt = tmp_path / "notes.jpg"
    txt.write_text("this is not an image\n")
    good = save(tmp_path / "ok.jpg", gradient(16, 16))
    ds = im.ImageDataset([(txt, 0), (good, 1)], im.eval_transform(8, None))
    batch = im.collate_skip([ds[0], ds[1]])
    assert batch["skipped"] == [str(txt)] and batch["image"].shape == (1, 3, 8, 8)
    counter = im.SkipCounter()
    with pytest.warns(UserWarning, match="notes.jpg"):
        counter.add(batch["skipped"])
    assert counter.count == 1


def test_empty_class_folder_is_an_error_naming_key_and_folder(tmp_path):
    root = image_tree(tmp_path / "data")
    (root / "train" / "empty").mkdir()
    (root / "train" / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(im.DataLayoutError) as e:
        ImageDataModule(str(root), num_workers=0).setup()
    assert "data.root (train/)" in str(e.value) and str(root / "train" / "empty") in str(e.value)


def test_unreadable_sub_folder_is_an_error_naming_it(tmp_path, monkeypatch):
    root = image_tree(tmp_path / "data")
    hidden = root / "train" / "a" / "more"
    save(hidden / "x.png", gradient(8, 8))
    assert hidden / "x.png" in im.list_images(root / "train")
    real = os.scandir

    def scandir(path="."):  # as a folder without read permission behaves for a non-root user
        if Path(path) == hidden:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(im.DataLayoutError, match="data.root") as e:
        ImageDataModule(str(root), num_workers=0).setup()
    assert str(hidden) in str(e.value)
    with pytest.raises(im.DataLayoutError, match="data.root"):  # layout=folder searches recursively
        ImageDataModule(str(root), layout="folder", num_workers=0).setup()
