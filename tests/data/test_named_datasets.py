"""The named data presets (cifar10, cifar100, stl10, imagenet100, places205) read tiny files written
here in each data set's published format, through the real configs (Hydra compose + instantiate).
Pixels and labels are compared with the arrays the files were encoded from."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CONF
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from ssl_bench.data.imagenet100 import CLASSES_FILE
from ssl_bench.errors import SuiteError

PRESETS = ("cifar10", "cifar100", "stl10", "imagenet100", "places205")


def composed(preset: str, root: Path, tmp: Path, *extra: str, primary: str = "pretrain"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(primary, overrides=[f"data={preset}", f"data.root={root}", "data.num_workers=0",
                                          f"paths.data_dir={tmp}", f"paths.cache_dir={tmp}",
                                          f"paths.log_dir={tmp}", f"paths.output_dir={tmp}", *extra])
    OmegaConf.resolve(cfg)
    return cfg


def datamodule(preset: str, root: Path, tmp: Path, *extra: str):
    dm = instantiate(composed(preset, root, tmp, *extra).data)
    dm.setup("fit")
    return dm


def all_images(dm, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every image of a split, in order, as N x H x W x 3 uint8, and the labels."""
    batches = list(dm.split_loader(split, batch_size=64))
    images = torch.cat([b["image"] for b in batches]).permute(0, 2, 3, 1).numpy()
    return images, torch.cat([b["label"] for b in batches]).numpy()


# ---- CIFAR: pickled dicts; "data" rows = 1024 red, 1024 green, 1024 blue values, each plane row-major

def cifar_rows(images: np.ndarray) -> np.ndarray:
    """N x 32 x 32 x 3 -> N x 3072 in the CIFAR row format, plane by plane."""
    return np.stack([np.concatenate([im[:, :, c].ravel() for c in range(3)]) for im in images])


def dump(obj: dict, path: Path, protocol: int = 2, numpy1_names: bool = False) -> None:
    """Pickle ``obj``; numpy1_names: name numpy's functions as numpy 1.x did (numpy.core), as in the
    published files, which numpy 1.x under Python 2 wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = pickle.dumps(obj, protocol=protocol)
    path.write_bytes(raw.replace(b"numpy._core.", b"numpy.core.") if numpy1_names else raw)


def write_cifar10(root: Path, rng: np.random.Generator, per_batch: int = 3) -> dict[str, np.ndarray]:
    base = root / "cifar-10-batches-py"
    train = rng.integers(0, 256, (5 * per_batch, 32, 32, 3), dtype=np.uint8)
    train_y = rng.integers(0, 10, 5 * per_batch)
    for i in range(5):
        part = slice(i * per_batch, (i + 1) * per_batch)
        dump({b"batch_label": f"training batch {i + 1} of 5".encode(), b"labels": train_y[part].tolist(),
              b"data": cifar_rows(train[part]), b"filenames": [b"x.png"] * per_batch}, base / f"data_batch_{i + 1}",
             protocol=0 if i == 0 else 2, numpy1_names=i < 2)
    test = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    test_y = np.array([9, 0, 3, 3])
    dump({b"batch_label": b"testing batch 1 of 1", b"labels": test_y.tolist(), b"data": cifar_rows(test)},
         base / "test_batch", protocol=pickle.HIGHEST_PROTOCOL)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    dump({b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}, base / "batches.meta")
    return {"train": train, "train_y": train_y, "test": test, "test_y": test_y}


def write_cifar100(root: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    base = root / "cifar-100-python"
    out = {}
    for split, n in (("train", 6), ("test", 3)):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine, coarse = rng.integers(0, 100, n), rng.integers(0, 20, n)
        dump({b"filenames": [b"x.png"] * n, b"batch_label": split.encode(), b"fine_labels": fine.tolist(),
              b"coarse_labels": coarse.tolist(), b"data": cifar_rows(images)}, base / split)
        out |= {split: images, f"{split}_fine": fine, f"{split}_coarse": coarse}
    dump({b"fine_label_names": [f"fine{i:03d}".encode() for i in range(100)],
          b"coarse_label_names": [f"coarse{i:02d}".encode() for i in range(20)]}, base / "meta")
    return out


def test_cifar10_pixels_labels_and_default_geometry(tmp_path):
    ref = write_cifar10(tmp_path / "c10", np.random.default_rng(0))
    dm = datamodule("cifar10", tmp_path / "c10", tmp_path, "data.load_size=null", "data.crop_size=32")
    assert dm.classes[:3] == ["airplane", "automobile", "bird"] and dm.num_classes == 10
    assert (len(dm.train_samples), len(dm.val_samples)) == (15, 4)
    for split, key in (("train", "train"), ("val", "test")):
        images, labels = all_images(dm, split)
        np.testing.assert_array_equal(images, ref[key])
        np.testing.assert_array_equal(labels, ref[f"{key}_y"])
    cfg = composed("cifar10", tmp_path / "c10", tmp_path)
    assert cfg.backbone._target_.endswith("alexnet_small")  # docs/datasets.md: 2x upscale, alexnet_small
    default = instantiate(cfg.data)
    assert next(iter(default.train_dataloader()))["image"].shape[1:] == (3, 56, 56)


def test_cifar100_fine_and_coarse_labels(tmp_path):
    ref = write_cifar100(tmp_path / "data", np.random.default_rng(1))
    dm = datamodule("cifar100", tmp_path / "data", tmp_path, "data.load_size=null", "data.crop_size=32")
    assert dm.num_classes == 100 and dm.classes[7] == "fine007"
    images, labels = all_images(dm, "val")
    np.testing.assert_array_equal(images, ref["test"])
    np.testing.assert_array_equal(labels, ref["test_fine"])
    coarse = datamodule("cifar100", tmp_path / "data", tmp_path, "data.labels=coarse")
    assert coarse.num_classes == 20
    assert [y for _, y in coarse.train_samples] == ref["train_coarse"].tolist()


def test_cifar_missing_files_and_unsafe_pickles_are_named(tmp_path):
    write_cifar10(tmp_path / "c10", np.random.default_rng(2))
    (tmp_path / "c10" / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(SuiteError, match=r"missing .*cifar-10-batches-py/data_batch_4"):
        datamodule("cifar10", tmp_path / "c10", tmp_path)
    with pytest.raises(SuiteError, match=r"missing .*cifar-100-python/train.*python version"):
        datamodule("cifar100", tmp_path / "nothing", tmp_path)

    marker = tmp_path / "code-ran"

    class Payload:  # what a hostile pickle does: call a function while loading (here: create a file)
        def __reduce__(self):
            return (open, (str(marker), "w"))
    write_cifar10(tmp_path / "evil", np.random.default_rng(2))
    dump({b"label_names": Payload()}, tmp_path / "evil" / "cifar-10-batches-py" / "batches.meta")
    with pytest.raises(SuiteError, match=r"batches.meta is not a CIFAR python batch.*refusing to load .*open"):
        datamodule("cifar10", tmp_path / "evil", tmp_path)
    assert not marker.exists()


# ---- STL-10: raw uint8, each 96 x 96 colour plane column by column; labels 1..10 as uint8

def write_stl_images(path: Path, images: np.ndarray) -> None:
    """N x 96 x 96 x 3 (row, column, channel) -> the binary format: planes in Fortran (column) order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(im[:, :, c].tobytes(order="F") for im in images for c in range(3)))


def write_stl10(root: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    base = root / "stl10_binary"
    rows, cols = np.meshgrid(np.arange(96), np.arange(96), indexing="ij")
    pattern = np.stack([rows, 2 * cols, (rows > cols) * 255], axis=-1).astype(np.uint8)  # no symmetry
    ref = {"train": np.concatenate([pattern[None], rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)]),
           "test": rng.integers(0, 256, (2, 96, 96, 3), dtype=np.uint8),
           "unlabeled": rng.integers(0, 256, (5, 96, 96, 3), dtype=np.uint8),
           "train_y": np.array([1, 10, 4, 4]), "test_y": np.array([2, 7])}
    for split in ("train", "test", "unlabeled"):
        write_stl_images(base / f"{split}_X.bin", ref[split])
    for split in ("train", "test"):
        ref[f"{split}_y"].astype(np.uint8).tofile(base / f"{split}_y.bin")
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (base / "class_names.txt").write_text("\n".join(names) + "\n")
    return ref


def test_stl10_column_major_planes_and_splits(tmp_path):
    ref = write_stl10(tmp_path / "stl", np.random.default_rng(3))
    dm = datamodule("stl10", tmp_path / "stl", tmp_path, "data.crop_size=96")
    images, labels = all_images(dm, "train")
    assert images[0, 5, 40, 0] == 5 and images[0, 5, 40, 1] == 80 and images[0, 40, 5, 2] == 255
    np.testing.assert_array_equal(images, ref["train"])
    np.testing.assert_array_equal(labels, ref["train_y"] - 1)  # 1-based in the files
    images, labels = all_images(dm, "val")
    np.testing.assert_array_equal(images, ref["test"])
    np.testing.assert_array_equal(labels, ref["test_y"] - 1)
    assert dm.classes[-1] == "truck" and dm.num_classes == 10
    both = datamodule("stl10", tmp_path / "stl", tmp_path, "data.train_split=train+unlabeled", "data.crop_size=96")
    assert len(both.train_samples) == 4 + 5 and both.num_classes == 0  # unlabelled images: no classes
    np.testing.assert_array_equal(all_images(both, "train")[0][4:], ref["unlabeled"])
    assert composed("stl10", tmp_path, tmp_path).backbone.fc_channels == 4096  # the faithful AlexNet at 96 px


def test_stl10_bad_files_are_named(tmp_path):
    write_stl10(tmp_path / "stl", np.random.default_rng(4))
    base = tmp_path / "stl" / "stl10_binary"
    (base / "unlabeled_X.bin").unlink()
    datamodule("stl10", tmp_path / "stl", tmp_path)  # train_split=train does not need it
    with pytest.raises(SuiteError, match=r"missing .*stl10_binary/unlabeled_X.bin"):
        datamodule("stl10", tmp_path / "stl", tmp_path, "data.train_split=unlabeled")
    (base / "train_y.bin").write_bytes(bytes([1, 11, 1, 1]))
    with pytest.raises(SuiteError, match=r"train_y.bin: labels in \[1, 11\]; expected 1..10"):
        datamodule("stl10", tmp_path / "stl", tmp_path)
    (base / "train_y.bin").write_bytes(bytes([1, 10, 4, 4]))
    (base / "test_X.bin").write_bytes(b"\0" * 1000)
    with pytest.raises(SuiteError, match=r"test_X.bin: 1000 bytes is not a whole number of STL-10 images"):
        datamodule("stl10", tmp_path / "stl", tmp_path)


# ---- ImageNet-100 and Places205: image files (lossless PNG, so pixels compare exactly)

def write_png(path: Path, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def test_packaged_imagenet100_list():
    wnids = [line for line in CLASSES_FILE.read_text().splitlines() if not line.startswith("#")]
    assert len(wnids) == len(set(wnids)) == 100
    # first, 50th and last entries of CMC's imagenet100.txt
    assert (wnids[0], wnids[49], wnids[-1]) == ("n02869837", "n03379051", "n02090622")


def test_imagenet100_keeps_the_listed_classes(tmp_path):
    rng = np.random.default_rng(5)
    wnids = sorted(line for line in CLASSES_FILE.read_text().splitlines() if not line.startswith("#"))
    root = tmp_path / "imagenet"
    ref = {split: {w: write_png(root / split / w / f"{w}_0.png", rng) for w in wnids} for split in ("train", "val")}
    write_png(root / "train" / "n00000001" / "other.png", rng)  # a class outside the list: left out
    write_png(root / "val" / "n00000001" / "other.png", rng)
    dm = datamodule("imagenet100", root, tmp_path, "data.load_size=null", "data.crop_size=16")
    assert dm.classes == wnids and dm.num_classes == 100 and len(dm.train_samples) == 100
    images, labels = all_images(dm, "val")
    np.testing.assert_array_equal(images, np.stack([ref["val"][w] for w in wnids]))
    np.testing.assert_array_equal(labels, np.arange(100))
    (root / "val" / wnids[7] / f"{wnids[7]}_0.png").unlink()
    (root / "val" / wnids[7]).rmdir()
    with pytest.raises(SuiteError, match=rf"1 of the 100 listed class folders are missing: .*val/{wnids[7]}"):
        datamodule("imagenet100", root, tmp_path)
    subset = tmp_path / "three.txt"
    subset.write_text(f"{wnids[3]}\n{wnids[1]}\n# comment\n{wnids[2]}\n")
    dm = datamodule("imagenet100", root, tmp_path, f"data.classes_file={subset}")
    assert dm.classes == wnids[1:4] and [y for _, y in dm.val_samples] == [0, 1, 2]


PLACES = "data/vision/torralba/deeplearning/images256"


def write_places(root: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Three classes, one of them with a sub-folder (as s/stadium/baseball); one corrupt train image."""
    lists = {"train": [("a/abbey/gsun_01.png", 0), ("a/abbey/gsun_02.png", 0), ("b/bar/gsun_03.png", 1),
                       ("s/stadium/baseball/gsun_04.png", 2), ("s/stadium/baseball/gsun_05.jpg", 2)],
             "val": [("b/bar/gsun_06.png", 1), ("a/abbey/gsun_07.png", 0), ("s/stadium/baseball/gsun_08.png", 2)]}
    ref = {}
    for split, entries in lists.items():
        for rel, _ in entries:
            if rel.endswith(".jpg"):
                (root / PLACES / rel).write_bytes(b"\xff\xd8 not really a JPEG")  # undecodable
            else:
                ref[rel] = write_png(root / PLACES / rel, rng)
        lines = "".join(f"{rel} {label}\n" for rel, label in entries)
        (root / "trainvalsplit_places205").mkdir(parents=True, exist_ok=True)
        (root / "trainvalsplit_places205" / f"{split}_places205.csv").write_text(lines)
    return {"val": np.stack([ref[rel] for rel, _ in lists["val"]]), "val_y": [1, 0, 2]}


def test_places205_lists_classes_and_skipped_images(tmp_path):
    ref = write_places(tmp_path / "places", np.random.default_rng(6))
    dm = datamodule("places205", tmp_path / "places", tmp_path, "data.load_size=null", "data.crop_size=16")
    assert dm.classes == ["abbey", "bar", "stadium/baseball"] and dm.num_classes == 3
    assert [y for _, y in dm.train_samples] == [0, 0, 1, 2, 2]
    images, labels = all_images(dm, "val")
    np.testing.assert_array_equal(images, ref["val"])
    assert labels.tolist() == ref["val_y"]
    batch = next(iter(dm.split_loader("train", batch_size=8)))
    assert batch["image"].shape[0] == 4 and [Path(p).name for p in batch["skipped"]] == ["gsun_05.jpg"]
    with pytest.raises(SuiteError, match=r"data.max_skipped_fraction=0.05: 1 of the 5 train .*gsun_05.jpg"):
        dm.count_skipped("train", batch["skipped"])  # 1 of 5 is above the default 5%: the run stops, naming it
    tolerant = datamodule("places205", tmp_path / "places", tmp_path, "data.max_skipped_fraction=0.25")
    tolerant.count_skipped("train", next(iter(tolerant.split_loader("train", batch_size=8)))["skipped"])
    assert tolerant.skipped_by_split == {"train": 1, "val": 0}


def test_places205_missing_files_are_named(tmp_path):
    write_places(tmp_path / "places", np.random.default_rng(7))
    (tmp_path / "places" / PLACES / "b/bar/gsun_06.png").unlink()
    with pytest.raises(SuiteError, match=r"val_places205.csv lists 1 image\(s\) missing under .*b/bar/gsun_06.png"):
        datamodule("places205", tmp_path / "places", tmp_path)
    (tmp_path / "places" / "trainvalsplit_places205" / "train_places205.csv").unlink()
    with pytest.raises(SuiteError, match=r"missing Places205 list file .*trainvalsplit_places205/train_places205.csv"):
        datamodule("places205", tmp_path / "places", tmp_path)


def test_places205_paper_probe_composes(tmp_path):
    cfg = composed("places205", tmp_path, tmp_path, "protocol=paper", "init=gaussian", primary="probe_run")
    assert cfg.protocol.name == "paper" and cfg.data._target_.endswith("Places205DataModule")
    assert cfg.get("probe", {}).get("num_classes") is None  # the 205 classes come from the list files


@pytest.mark.parametrize("preset", PRESETS)
def test_missing_root_is_one_named_error(preset, tmp_path):
    with pytest.raises(SuiteError, match=rf"data.root={tmp_path / 'absent'}|missing .*{tmp_path / 'absent'}"):
        datamodule(preset, tmp_path / "absent", tmp_path)


def test_stl10_pretrain_and_probe_end_to_end(tmp_path, run_cli, one_thread):
    """Two colorization steps on STL-10's unlabelled + train images (L input), then a linear probe of
    the checkpoint on the labelled split (RGB pretexts: docs/datasets.md)."""
    write_stl10(tmp_path / "stl", np.random.default_rng(8))
    common = [f"data.root={tmp_path / 'stl'}", "data=stl10", "data.num_workers=0", "data.batch_size=4",
              "data.crop_size=64", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.log_dir={tmp_path}",
              "trainer.enable_progress_bar=false", "backbone.widths=[16,32,48,48,32]", "backbone.fc_channels=64"]
    out = tmp_path / "pretrain"
    assert run_cli("pretrain", *common, "data.train_split=train+unlabeled", f"hydra.run.dir={out}",
                   "init=gaussian", "trainer.max_steps=2", "callbacks.samples.every_n_steps=0") == 0
    record = json.loads((out / "results.json").read_text())
    assert record["metrics"]["pretrain/steps"] == 2 and record["dataset"]["num_train"] == 9
    probe_out = tmp_path / "probe"
    assert run_cli("probe", *common[:-2], f"checkpoint={out / 'checkpoints' / 'last.ckpt'}", "probe.epochs=1",
                   "probe.layers=[conv1,conv5]", f"hydra.run.dir={probe_out}") == 0
    probe = json.loads((probe_out / "results.json").read_text())
    assert 0.0 <= probe["metrics"]["probe/conv1/top1"] <= 1.0 and probe["dataset"]["num_train"] == 4


# the context prediction grids docs/datasets.md gives for the presets' crops
CONTEXT_GRIDS = {"cifar10": ["pretext.patch_size=14", "pretext.gap=4", "pretext.jitter=2"],
                 "stl10": ["pretext.patch_size=24", "pretext.gap=6", "pretext.jitter=2"]}


@pytest.mark.parametrize("preset", sorted(CONTEXT_GRIDS))
def test_rgb_pretext_at_the_default_crop(preset, tmp_path, run_cli, one_thread):
    """Context prediction (RGB) at the preset's default crop with the documented grid: one step."""
    root = tmp_path / "data"
    (write_cifar10 if preset == "cifar10" else write_stl10)(root, np.random.default_rng(9))
    out = tmp_path / "run"
    assert run_cli("pretrain", f"data={preset}", f"data.root={root}", "data.num_workers=0", "data.batch_size=4",
                   "pretext=context_prediction", "pretext.head_channels=32", *CONTEXT_GRIDS[preset],
                   "backbone.widths=[16,32,48,48,32]", "backbone.fc_channels=32", "trainer.max_steps=1",
                   "trainer.enable_progress_bar=false", "callbacks.samples.every_n_steps=0",
                   f"paths.cache_dir={tmp_path}", f"paths.log_dir={tmp_path}", f"hydra.run.dir={out}") == 0
    record = json.loads((out / "results.json").read_text())
    assert record["trunk"]["input_space"] == "rgb" and record["metrics"]["pretrain/steps"] == 1
