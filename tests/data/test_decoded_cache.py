"""The pre-decoded uint8 cache (ssl_bench.data.decoded_cache) and the accelerator-side crop + flip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_overrides
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from ssl_bench.data import decoded_cache as dc
from ssl_bench.data.datamodule import ImageDataModule
from ssl_bench.data.images import collate_skip, image_folder_samples


def smooth_image(h: int, w: int, seed: int) -> Image.Image:
    """Smooth colour field (resampling differences stay small on it, unlike on noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 5, 7, generator=g)
    x = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


@pytest.fixture
def odd_data(tmp_path) -> Path:
    """ImageFolder tree of non-square images of several sizes, one of them greyscale."""
    root = tmp_path / "odd"
    sizes = [(90, 70), (70, 120), (64, 64), (100, 81), (77, 200), (65, 66)]
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
    for i, (h, w) in enumerate(sizes):
        img = smooth_image(h, w, i)
        if i == 2:
            img = img.convert("L")
        img.save(root / "train" / "ab"[i % 2] / f"img{i}.png")
    smooth_image(80, 100, 99).save(root / "val" / "a" / "v0.png")
    smooth_image(100, 80, 98).save(root / "val" / "b" / "v1.png")
    return root


def reference_square(path: Path, size: int) -> np.ndarray:
    """Independent reference: PIL bilinear resize of the short side (PIL antialiases when reducing),
    then the centre square; 3 x size x size uint8."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        if min(w, h) != size:  # torchvision's output size: short side = size, long side truncated
            nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
            im = im.resize((nw, nh), Image.BILINEAR)
        w, h = im.size
        top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
        arr = np.asarray(im)[top:top + size, left:left + size]
    return arr.transpose(2, 0, 1)


def test_round_trip_matches_pil_reference(odd_data, tmp_path):
    samples, classes = image_folder_samples(odd_data / "train", "root")
    out = dc.build_cache(tmp_path / "c" / "train", samples, odd_data, 48, classes=classes, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["n"] == meta["n_total"] == 6 and meta["size"] == 48 and meta["classes"] == ["a", "b"]
    assert meta["split"] == "train" and meta["source_root"] == str(odd_data) and meta["num_skipped"] == 0
    assert (out / "images.u8").stat().st_size == 6 * 3 * 48 * 48
    ds = dc.DecodedImages(out)
    batch = ds[list(range(len(ds)))]
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (6, 3, 48, 48)
    assert batch["label"].tolist() == [lab for _, lab in samples] and batch["skipped"] == []
    for (path, _), got in zip(samples, batch["image"]):
        ref = reference_square(path, 48).astype(np.int16)
        diff = np.abs(got.numpy().astype(np.int16) - ref)
        # torch's antialiased bilinear is a port of PIL's filter (same support and weights) but
        # computes in float where PIL uses fixed point and rounds per pass: a pixel may land on the
        # neighbouring uint8 level (measured: max 1, mean <= 0.006 on these images)
        assert diff.max() <= 1 and diff.mean() < 0.05, (path.name, diff.max(), diff.mean())


def test_eval_reader_centre_crops_and_matches_file_loader(tiny_data, tmp_path):
    """Square images at native size (the synthetic set): the cache reproduces the file path exactly."""
    dm = ImageDataModule(str(tiny_data), crop_size=56, load_size=None, batch_size=7, num_workers=0,
                         decoded_cache=str(tmp_path / "dc"))
    ref = ImageDataModule(str(tiny_data), crop_size=56, load_size=None, batch_size=7, num_workers=0)
    dm.prepare_data()
    dm.setup()
    ref.setup()
    got = list(dm.val_dataloader())
    want = list(ref.val_dataloader())
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert torch.equal(g["image"], w["image"]) and torch.equal(g["label"], w["label"])
    assert torch.equal(dm.first_train_images(5), ref.first_train_images(5))
    # the train loader yields the full S x S images, batched like the file loader
    train = dm.train_dataloader()
    assert len(train) == len(ref.train_dataloader())
    b = next(iter(train))
    assert b["image"].shape == (7, 3, 64, 64) and b["label"].shape == (7,) and b["skipped"] == []
    # batched reads with a BatchSampler and batch_size=None work the same way
    ds = dc.DecodedImages(tmp_path / "dc" / "val", crop=56)
    loader = DataLoader(ds, sampler=BatchSampler(SequentialSampler(ds), 7, False), batch_size=None)
    assert torch.equal(next(iter(loader))["image"], want[0]["image"])


def test_null_cache_keeps_the_file_loaders(tiny_data):
    dm = ImageDataModule(str(tiny_data), crop_size=56, load_size=None, batch_size=8, num_workers=0)
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.collate_fn is collate_skip and dm.decoded_cache is None
    batch = {"image": torch.zeros(2, 3, 64, 64, dtype=torch.uint8)}
    assert dm.on_after_batch_transfer(batch, 0)["image"].shape == (2, 3, 64, 64)


def test_corrupt_file_is_skipped_and_named(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    cls = sorted(p.name for p in (data / "train").iterdir())[0]
    (data / "train" / cls / "broken.jpg").write_bytes(b"not a jpeg")
    samples, classes = image_folder_samples(data / "train", "root")
    out = dc.build_cache(tmp_path / "c", samples, data, 64, classes=classes, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_skipped"] == 1 and meta["skipped_files"] == [f"train/{cls}/broken.jpg"]
    assert meta["n"] == 80 and meta["n_total"] == 81
    ds = dc.DecodedImages(out)
    assert len(ds) == 81  # positions of the source list: one epoch reports the bad file once
    skipped, n = [], 0
    for start in range(0, 81, 16):
        b = ds[list(range(start, min(start + 16, 81)))]
        skipped += b["skipped"]
        n += b["image"].shape[0]
        assert b["image"].shape[0] == b["label"].shape[0]
    assert n == 80 and skipped == [str(data / "train" / cls / "broken.jpg")]


def test_interrupted_build_leaves_no_trusted_cache(tiny_data, tmp_path, monkeypatch):
    samples, classes = image_folder_samples(tiny_data / "train", "root")
    real, calls = dc._decode_task, {"n": 0}

    def dying(args):
        calls["n"] += 1
        if calls["n"] > 30:
            raise KeyboardInterrupt  # as if the build were stopped halfway
        return real(args)

    monkeypatch.setattr(dc, "_decode_task", dying)
    target = tmp_path / "dc" / "train"
    with pytest.raises(KeyboardInterrupt):
        dc.build_cache(target, samples, tiny_data, 64, classes=classes, progress=False)
    assert not target.exists() and list((tmp_path / "dc").iterdir()) == [], "no half-written folder left"
    monkeypatch.setattr(dc, "_decode_task", real)
    # a killed build (temporary folder left behind, say by SIGKILL) is never mistaken for the cache:
    (tmp_path / "dc" / ".train.building.x").mkdir()
    dm = ImageDataModule(str(tiny_data), crop_size=56, load_size=None, num_workers=0,
                         decoded_cache=str(tmp_path / "dc"))
    dm.prepare_data()
    dm.setup()
    assert dc.read_meta(target)["n"] == 80
    # a folder without a complete meta.json is refused, not read
    (target / "meta.json").unlink()
    other = ImageDataModule(str(tiny_data), crop_size=56, load_size=None, num_workers=0,
                            decoded_cache=str(tmp_path / "dc"))
    with pytest.raises(dc.DecodedCacheMismatch, match="not a complete decoded cache"):
        other.setup()


def test_full_disk_is_an_error_naming_the_file_not_a_crash(tiny_data, tmp_path, monkeypatch):
    """Both memmap writers (this cache and the probe feature cache) reserve their blocks first: a full
    disk is an OSError naming the file (a sparse map would die of SIGBUS when the disk fills)."""
    import errno
    import os

    from ssl_bench.probe.feature_cache import FeatureStore

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    samples, classes = image_folder_samples(tiny_data / "train", "root")
    with pytest.raises(OSError, match=r"not enough disk space for .*images\.u8"):
        dc.build_cache(tmp_path / "dc" / "train", samples, tiny_data, 64, classes=classes, progress=False)
    assert list((tmp_path / "dc").iterdir()) == [], "nothing half-written left"
    store = FeatureStore(tmp_path / "features", "key")
    batches = [({"conv1": torch.ones(4, 8)}, torch.zeros(4, dtype=torch.int64))]
    with pytest.raises(OSError, match=r"not enough disk space for .*conv1\.f16"):
        store.write(batches, 4)
    assert not store.layers() and list((tmp_path / "features").iterdir()) == []


def test_mismatched_dataset_or_size_is_an_error_naming_the_folder(tiny_data, tmp_path):
    cache = tmp_path / "dc"
    dm = ImageDataModule(str(tiny_data), crop_size=56, load_size=None, num_workers=0, decoded_cache=str(cache))
    dm.prepare_data()
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    next((data / "train").rglob("*.jpg")).unlink()
    other = ImageDataModule(str(data), crop_size=56, load_size=None, num_workers=0, decoded_cache=str(cache))
    with pytest.raises(dc.DecodedCacheMismatch) as e:
        other.prepare_data()  # the folder exists: not rebuilt
        other.setup()
    msg = str(e.value)
    assert str(cache / "train") in msg and "data.decoded_cache" in msg and "other files" in msg
    resized = ImageDataModule(str(tiny_data), crop_size=56, load_size=60, num_workers=0, decoded_cache=str(cache))
    with pytest.raises(dc.DecodedCacheMismatch, match="60 px"):
        resized.setup()
    # rebuilding when asked
    samples = ImageDataModule(str(data), num_workers=0)
    samples.setup()
    dc.build_cache(cache / "train", samples.train_samples, data, 64, overwrite=True, progress=False)
    other.setup()  # val/ was built from identical files, train/ now matches
    assert other.train_dataloader().dataset.dataset.n == 79  # (ResumableLoader wraps it in SeededDataset)


def brute_force(images: torch.Tensor, top, left, flip, crop: int) -> torch.Tensor:
    out = []
    for i in range(images.shape[0]):
        x = images[i, :, int(top[i]):int(top[i]) + crop, int(left[i]):int(left[i]) + crop]
        out.append(x.flip(-1) if bool(flip[i]) else x)
    return torch.stack(out)


def test_crop_flip_equals_per_sample_slicing():
    from ssl_bench.data.resumable import mix_seed
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (9, 3, 20, 23), dtype=torch.uint8, generator=g)
    seeds = torch.tensor([mix_seed(5, 0, p) for p in range(9)])
    top, left, flip = dc.seeded_offsets(seeds, 20, 23, 11)
    out = dc.crop_flip(images, top, left, flip, 11)
    assert out.dtype == torch.uint8 and out.shape == (9, 3, 11, 11)
    assert torch.equal(out, brute_force(images, top, left, flip, 11))
    # edges reachable, both flips drawn
    top, left, flip = dc.seeded_offsets(torch.tensor([mix_seed(0, 0, p) for p in range(2000)]), 20, 23, 11)
    assert (top.min(), top.max(), left.min(), left.max()) == (0, 9, 0, 12) and 0.4 < flip.float().mean() < 0.6
    square = images[..., :20]  # a full-size crop is the image or its mirror
    t, l, f = dc.seeded_offsets(seeds, 20, 20, 20)
    full = dc.crop_flip(square, t, l, f, 20)
    assert all(torch.equal(a, x) or torch.equal(a, x.flip(-1)) for a, x in zip(full, square))
    with pytest.raises(ValueError, match="larger"):
        dc.seeded_offsets(seeds, 20, 23, 21)
    none = torch.zeros(0, dtype=torch.int64)
    assert dc.crop_flip(images[:0], none, none, none.bool(), 11).shape == (0, 3, 11, 11)


@pytest.mark.slow
def test_pretraining_through_the_cache(tiny_data, tmp_path, run_cli, monkeypatch):
    import ssl_bench.data.datamodule as datamodule
    shapes = []
    real = datamodule.crop_flip  # the train loader's per-sample seeds give the offsets

    def spy(images, top, left, flip, crop):
        out = real(images, top, left, flip, crop)
        shapes.append((tuple(images.shape), tuple(out.shape)))
        return out

    monkeypatch.setattr(datamodule, "crop_flip", spy)
    out = tmp_path / "run"
    cache = tmp_path / "decoded"
    code = run_cli("pretrain", *tiny_overrides(tiny_data, out, tmp_path / "cache"), f"data.decoded_cache={cache}")
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "completed" and res["metrics"]["pretrain/steps"] == 5
    assert res["config"]["data"]["decoded_cache"] == str(cache)
    assert dc.read_meta(cache / "train")["n"] == 80 and dc.read_meta(cache / "val")["n"] == 20
    assert shapes == [((16, 3, 64, 64), (16, 3, 56, 56))] * 5, "train batches cropped after the transfer only"


@pytest.mark.slow
def test_cli_data_cache(tiny_data, tmp_path, run_cli, capsys):
    out = tmp_path / "dc"
    assert run_cli("data", "cache", "--root", str(tiny_data), "--out", str(out), "--workers", "2",
                   "--size", "48") == 0
    text = capsys.readouterr().out
    assert "train: 80 images of 48 x 48" in text and f"data.decoded_cache={out}" in text
    assert dc.read_meta(out / "train")["size"] == 48 and dc.read_meta(out / "val")["n"] == 20
    # parallel decoding writes the same bytes as the in-process one
    samples, _ = image_folder_samples(tiny_data / "train", "root")
    one = dc.build_cache(tmp_path / "one", samples, tiny_data, 48, workers=0, progress=False)
    assert (one / "images.u8").read_bytes() == (out / "train" / "images.u8").read_bytes()
    assert run_cli("data", "cache", "--root", str(tiny_data), "--out", str(out), "--split", "val") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run_cli("data", "cache", "--root", str(tiny_data), "--out", str(out), "--split", "val",
                   "--overwrite", "--workers", "1") == 0
    assert dc.read_meta(out / "val")["size"] == 64  # native size


# data.decode=device: exercised with device="cpu" here (torchvision's CPU decoder); nvJPEG on a GPU is
# not covered by the suite.

def test_device_decode_matches_file_loader_on_cpu(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    first_class = sorted(p.name for p in (data / "val").iterdir())[0]
    (data / "val" / first_class / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    smooth_image(70, 90, 1).save(data / "val" / first_class / "zz.png")  # not a JPEG: CPU fallback
    kw = dict(crop_size=40, load_size=48, batch_size=32, num_workers=0)
    dev = ImageDataModule(str(data), decode="device", **kw)
    ref = ImageDataModule(str(data), **kw)
    dev.setup()
    ref.setup()
    dev._decode_on_device = lambda: True  # as while a trainer runs: the loaders hand over file bytes
    raw = next(iter(dev.val_dataloader()))
    assert "encoded" in raw and len(raw["encoded"]) == 22
    got = dev.on_after_batch_transfer(raw, 0)  # no trainer: eval transform
    want = next(iter(ref.val_dataloader()))
    # same libjpeg-turbo decoder as PIL on the CPU: identical pixels (nvJPEG may differ by a level)
    assert torch.equal(got["image"], want["image"]) and torch.equal(got["label"], want["label"])
    assert got["skipped"] == want["skipped"] == [str(data / "val" / first_class / "broken.jpg")]
    train = next(iter(dev.train_dataloader()))
    assert dev.on_after_batch_transfer(train, 0)["image"].shape[1:] == (3, 40, 40)
    # without a running trainer (final samples after fit) the loaders decode on the CPU as before
    del dev._decode_on_device
    assert torch.equal(next(iter(dev.val_dataloader()))["image"], want["image"])


def test_device_decode_options_are_checked(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="data.decode"):
        ImageDataModule(str(tiny_data), decode="gpu")
    with pytest.raises(ValueError, match="data.decoded_cache"):
        ImageDataModule(str(tiny_data), decode="device", decoded_cache=str(tmp_path))


@pytest.mark.slow
def test_pretraining_with_device_decode(tiny_data, tmp_path, run_cli, monkeypatch):
    import ssl_bench.data.datamodule as datamodule
    real, sizes = datamodule.decode_on_device, []

    def spy(batch, transform):
        out = real(batch, transform)
        sizes.append(out["image"].shape[0])
        return out

    monkeypatch.setattr(datamodule, "decode_on_device", spy)
    out = tmp_path / "run"
    assert run_cli("pretrain", *tiny_overrides(tiny_data, out, tmp_path / "cache"), "data.decode=device") == 0
    # sanity check (val 16 + 4), 5 train batches of 16, validation (16 + 4): all decoded in the hook
    assert sizes == [16, 4] + [16] * 5 + [16, 4]
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "completed" and res["metrics"]["pretrain/steps"] == 5
    assert res["dataset"]["skipped_images"] == 0 and res["config"]["data"]["decode"] == "device"


def encoded_batch(paths: list[Path]) -> dict:
    data = [np.frombuffer(p.read_bytes(), dtype=np.uint8) for p in paths]
    return {"encoded": dc.EncodedBatch(data, [str(p) for p in paths]),
            "label": torch.arange(len(paths)), "skipped": []}


@pytest.fixture
def jpeg_pair(tmp_path) -> tuple[Path, Path]:
    good = tmp_path / "good.jpg"
    smooth_image(40, 48, 3).save(good, quality=95)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:4] + b"\x00" * 64)  # a JPEG's magic, then nothing valid
    return good, bad


def test_device_decode_skips_bad_data(jpeg_pair):
    good, bad = jpeg_pair
    out = dc.decode_on_device(encoded_batch([bad, good]), lambda x: x)
    with Image.open(good) as img:
        want = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
    assert out["skipped"] == [str(bad)] and out["label"].tolist() == [1]
    assert np.array_equal(out["image"][0].numpy(), want)


@pytest.mark.parametrize("message, bad_data", [
    ("decode_jpeg, /w/vision/csrc/io/image/cpu/decode_jpeg.cpp:171, Image is incomplete or truncated", True),
    ("Error while decoding JPEG images: Failed to get image info: 3", True),
    ("Not a JPEG file: starts with 0x89 0x50", True),
    ("Error while decoding JPEG images: CUDA out of memory. Tried to allocate 20.00 MiB", False),
    ("CUDA error: an illegal memory access was encountered", False),
    ("decode_jpegs_cuda: torchvision not compiled with nvJPEG support", False),
    ("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: you tried to allocate 8", False),
    ("something else went wrong", False),
])
def test_decoder_errors_are_told_apart_by_message(message, bad_data):
    """Messages as torchvision's CPU and CUDA decoders and torch's allocators word them."""
    assert dc.is_decode_failure(RuntimeError(message)) is bad_data
    assert not dc.is_decode_failure(torch.cuda.OutOfMemoryError(message))


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("Error while decoding JPEG images: CUDA out of memory. Tried to allocate 20.00 MiB"),
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("something else went wrong"),
])
def test_device_decode_reraises_device_errors(jpeg_pair, monkeypatch, error):
    import torchvision.io

    def failing(*a, **k):
        raise error

    monkeypatch.setattr(torchvision.io, "decode_jpeg", failing)
    with pytest.raises(type(error)) as e:
        dc.decode_on_device(encoded_batch(list(jpeg_pair)), lambda x: x)
    assert e.value is error


def test_device_decode_falls_back_on_decoder_data_errors(jpeg_pair, monkeypatch):
    """nvJPEG's way of rejecting a file (wrapped status failure): the file goes to the CPU decoder,
    which skips the bad one and decodes the good one."""
    import torchvision.io
    good, bad = jpeg_pair
    real = torchvision.io.decode_jpeg

    def nvjpeg_like(inp, *a, **k):
        if isinstance(inp, list) or inp.numpy().tobytes() == bad.read_bytes():
            raise RuntimeError("Error while decoding JPEG images: Failed to get image info: 3")
        return real(inp, *a, **k)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", nvjpeg_like)
    out = dc.decode_on_device(encoded_batch([good, bad]), lambda x: x)
    with Image.open(good) as img:
        want = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
    assert out["skipped"] == [str(bad)] and np.array_equal(out["image"][0].numpy(), want)


def test_io_error_stops_the_build_naming_the_file(tiny_data, tmp_path, monkeypatch):
    import errno

    import PIL.Image

    from ssl_bench.data import images
    samples, classes = image_folder_samples(tiny_data / "train", "root")
    victim = samples[5][0]
    real = PIL.Image.open

    def eio(fp, *a, **k):
        if Path(fp) == victim:
            raise OSError(errno.EIO, "Input/output error")
        return real(fp, *a, **k)

    monkeypatch.setattr(PIL.Image, "open", eio)
    monkeypatch.setattr(images, "IO_RETRY_DELAY_S", 0.0)
    with pytest.raises(images.ImageReadError, match=victim.name):
        dc.build_cache(tmp_path / "dc" / "train", samples, tiny_data, 64, classes=classes, progress=False)
    assert list((tmp_path / "dc").iterdir()) == [], "nothing half-written left"


def test_cache_with_too_many_skipped_files_is_refused_at_setup(tiny_data, tmp_path):
    from ssl_bench.data.images import SkippedImagesError
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    cls = sorted(p.name for p in (data / "train").iterdir())[0]
    for i in range(5):  # 5 of 85 = 5.9 %
        (data / "train" / cls / f"broken{i}.jpg").write_bytes(b"not a jpeg")
    kw = dict(crop_size=56, load_size=None, num_workers=0, decoded_cache=str(tmp_path / "dc"))
    dm = ImageDataModule(str(data), **kw)
    dm.prepare_data()
    with pytest.raises(SkippedImagesError, match=r"data\.max_skipped_fraction=0\.05: 5 of the 85 train") as e:
        dm.setup()
    assert str(data / "train" / cls / "broken0.jpg") in str(e.value)
    ok = ImageDataModule(str(data), max_skipped_fraction=0.06, **kw)
    ok.setup()
    assert ok.skipped_by_split == {"train": 5, "val": 0}
