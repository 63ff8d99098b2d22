"""One LightningDataModule for every image source: ImageNet folders, any folder, the synthetic set."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerStatus
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from ssl_bench.data.decoded_cache import (
    DecodedImages,
    EncodedImages,
    build_cache,
    check_cache,
    collate_encoded,
    crop_flip,
    decode_on_device,
    first,
    native_size,
    seeded_offsets,
)
from ssl_bench.data.images import (
    DataLayoutError,
    ImageDataset,
    SkippedImagesError,
    collate_skip,
    eval_transform,
    fingerprint,
    image_folder_samples,
    list_images,
    skipped_summary,
    train_transform,
)
from ssl_bench.data.resumable import EpochBatchSampler, ResumableLoader
from ssl_bench.data.sharding import ShardedBatchSampler
from ssl_bench.data.synthetic import SyntheticSpec, generate
from ssl_bench.errors import ConfigError


class ImageDataModule(pl.LightningDataModule):
    """Decoded uint8 crops and labels.

    Args:
        root: data root (config key ``data.root``).
        layout: "imagefolder" = ROOT/train/<class>/* and ROOT/val/<class>/* (ImageNet, synthetic);
            "folder" = any folder of images, unlabelled; a ``val_fraction`` of it is held out.
        crop_size: train/val crop (the authors: 176-180 from 256).
        load_size: resize the short side to this before cropping (None = keep).
        synthetic: when given, ``prepare_data`` generates this synthetic set into ``root`` first.
        max_train_images: use a fixed random subset of the train split (for quick runs).
        decoded_cache: folder of pre-decoded uint8 copies of the splits (``<folder>/train``,
            ``<folder>/val``; see `ssl_bench.data.decoded_cache`), built by ``prepare_data`` when
            missing. Train batches then come from the cache at load_size (or native size) and are
            randomly cropped and flipped in `on_after_batch_transfer`, i.e. on the accelerator.
            None = decode the image files in loader workers.
        decode: "cpu" = loader workers decode the files (PIL); "device" = the train/val loaders hand
            over the file bytes and `on_after_batch_transfer` decodes each batch where the model runs
            (``torchvision.io.decode_jpeg``, nvJPEG on CUDA), then resizes and crops there. Loaders used
            outside the trainer (init statistics, the colour prior) still decode on the CPU.
        max_skipped_fraction: the most undecodable files a split may hold, as a fraction of it;
            beyond it the run stops (`SkippedImagesError`, naming the first files) instead of
            training on what is left. Counted per split, each file once, in `on_after_batch_transfer`
            (and from the decoded cache's list at setup); `skipped_by_split` has the counts.
    """

    def __init__(self, root: str, layout: str = "imagefolder", crop_size: int = 176,
                 load_size: int | None = 256, batch_size: int = 80, num_workers: int = 2,
                 val_fraction: float = 0.02, max_train_images: int | None = None,
                 synthetic: SyntheticSpec | None = None, seed: int = 0,
                 decoded_cache: str | None = None, decode: str = "cpu", max_skipped_fraction: float = 0.05) -> None:
        super().__init__()
        if layout not in ("imagefolder", "folder"):
            raise ConfigError(f"data.layout: expected 'imagefolder' or 'folder', got {layout!r}")
        self.root, self.layout = Path(root).expanduser(), layout
        self.crop_size, self.load_size = crop_size, load_size
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_fraction, self.max_train_images = val_fraction, max_train_images
        self.synthetic, self.seed = synthetic, seed
        self.classes: list[str] = []
        self.train_samples: list[tuple[Path, int]] = []
        self.val_samples: list[tuple[Path, int]] = []
        self._fingerprint: str | None = None
        self.decoded_cache = Path(decoded_cache).expanduser() if decoded_cache else None
        if decode not in ("cpu", "device"):
            raise ConfigError(f"data.decode: expected 'cpu' or 'device', got {decode!r}")
        if decode == "device" and self.decoded_cache is not None:
            raise ConfigError("data.decode=device decodes the image files; it cannot be combined with "
                              "data.decoded_cache (already decoded): set one of them")
        self.decode = decode
        if not 0.0 <= max_skipped_fraction <= 1.0:
            raise ConfigError(f"data.max_skipped_fraction: expected a fraction in [0, 1], got {max_skipped_fraction!r}")
        self.max_skipped_fraction = max_skipped_fraction
        self._skipped: dict[str, dict[str, None]] = {"train": {}, "val": {}}  # ordered sets of paths
        self._cache_meta: dict[str, dict] = {}
        self._train_loader: ResumableLoader | None = None
        self._resume_at: list[int] | None = None
        self._cache_size: int | None = None

    def prepare_data(self) -> None:
        if self.synthetic is not None:
            generate(self.root, self.synthetic)
        if self.decoded_cache is not None:
            self._discover()
            for split in ("train", "val"):
                if not (self.decoded_cache / split).exists():
                    build_cache(self.decoded_cache / split, self._samples(split), self.root, self.cache_size,
                                split=split, classes=self.classes, workers=self.num_workers, progress=True)

    def setup(self, stage: str | None = None) -> None:
        self._discover()
        for split in ("train", "val") if self.decoded_cache is not None else ():
            if split in self._cache_meta:
                continue
            fp = self.fingerprint if split == "train" else None
            meta = check_cache(self.decoded_cache / split, self._samples(split), self.root,
                               self.cache_size, dataset_fingerprint=fp)
            self.count_skipped(split, [str(self.root / f) for f in meta["skipped_files"]])
            self._cache_meta[split] = meta  # only once accepted: a refused cache is checked again

    def _samples(self, split: str) -> list[tuple[Path, int]]:
        return self.train_samples if split == "train" else self.val_samples

    @property
    def cache_size(self) -> int:
        """Side of the decoded cache's images: data.load_size, or the native short side when null."""
        if self._cache_size is None:
            self._discover()
            size = self.load_size or native_size([p for p, _ in self.train_samples])
            if size < self.crop_size:
                raise ConfigError(f"data.decoded_cache: images of {size} px (data.load_size, or the native size "
                                  f"when null) are smaller than data.crop_size={self.crop_size}")
            self._cache_size = size
        return self._cache_size

    def _discover(self) -> None:
        """Find the train/val samples (once)."""
        if self.train_samples:
            return
        self.train_samples, self.val_samples, self.classes = self.find_samples()
        if self.max_train_images and len(self.train_samples) > self.max_train_images:
            rng = random.Random(self.seed)
            self.train_samples = sorted(rng.sample(self.train_samples, self.max_train_images))

    def find_samples(self) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]], list[str]]:
        """(train samples, val samples, class names) of data.layout under data.root. The named data
        sets (CIFAR, STL-10, ImageNet-100, Places205) are subclasses that read their own layouts here."""
        if self.layout == "imagefolder":
            if not self.root.is_dir():
                raise DataLayoutError(
                    f"data.root={self.root} does not exist; expected ROOT/train/<class>/*.JPEG and "
                    "ROOT/val/<class>/*.JPEG (ImageNet layout)")
            train, classes = image_folder_samples(self.root / "train", "data.root (train/)")
            val, val_classes = image_folder_samples(self.root / "val", "data.root (val/)")
            if val_classes != classes:
                raise DataLayoutError(f"data.root={self.root}: train/ and val/ have different class "
                                      f"folders ({len(classes)} vs {len(val_classes)})")
            return train, val, classes
        if not self.root.is_dir():
            raise DataLayoutError(f"data.root={self.root} does not exist; expected a folder of "
                                  "images (searched recursively)")
        paths = list_images(self.root, "data.root")
        if len(paths) < 2:
            raise DataLayoutError(f"data.root={self.root} holds {len(paths)} image(s); expected "
                                  "a folder of images (searched recursively)")
        order = list(range(len(paths)))
        random.Random(self.seed).shuffle(order)
        n_val = max(1, int(round(self.val_fraction * len(paths))))
        train, val = sorted(order[n_val:]), sorted(order[:n_val])
        return [(paths[i], -1) for i in train], [(paths[i], -1) for i in val], []

    def dataset(self, samples: list, transform: Any) -> Dataset:
        """The dataset of (image, label) pairs over ``samples`` (an `ImageDataset` of files here;
        subclasses holding decoded arrays return theirs)."""
        return ImageDataset(samples, transform)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def fingerprint(self) -> str:
        """Identity of the train split (one stat per file, so computed once)."""
        if self._fingerprint is None:
            self._discover()
            self._fingerprint = fingerprint([p for p, _ in self.train_samples], self.root)
        return self._fingerprint

    def loader(self, samples, train: bool, batch_size: int | None = None) -> DataLoader:
        """Loader over any (path, label) list: train = random crop + flip + shuffle, else centre crop."""
        t = train_transform if train else eval_transform
        bs = batch_size or self.batch_size
        return DataLoader(self.dataset(samples, t(self.crop_size, self.load_size)), batch_size=bs,
                          shuffle=train, drop_last=train and len(samples) > bs,
                          num_workers=self.num_workers, collate_fn=collate_skip,
                          persistent_workers=self.num_workers > 0)

    def split_loader(self, split: str, batch_size: int | None = None) -> DataLoader:
        """A split in order, centre-cropped, on this module's data path (the decoded cache when there
        is one, which crops in the reader): for statistics and feature extraction outside the trainer."""
        if self.decoded_cache is None:
            return self.loader(self._samples(split), train=False, batch_size=batch_size)
        self.setup()
        ds = DecodedImages(self.decoded_cache / split, crop=self.crop_size, meta=self._cache_meta[split])
        return DataLoader(ds, batch_size=batch_size or self.batch_size, num_workers=self.num_workers,
                          collate_fn=first, persistent_workers=self.num_workers > 0)

    def _decode_on_device(self) -> bool:
        """data.decode=device, and a trainer is running (it calls `on_after_batch_transfer`): other
        callers of the loaders (final samples after fit) get decoded images."""
        trainer = getattr(self, "trainer", None)
        return (self.decode == "device" and trainer is not None
                and trainer.state.status == TrainerStatus.RUNNING)

    def _trainer_dataset(self, split: str, train: bool) -> tuple[Dataset, Any]:
        """(dataset, collate_fn) of a split for the trainer's loaders, on this module's data path."""
        self.setup()
        samples = self._samples(split)
        if self._decode_on_device():
            return EncodedImages(samples), collate_encoded
        if self.decoded_cache is not None:
            return DecodedImages(self.decoded_cache / split, crop=None if train else self.crop_size,
                                 meta=self._cache_meta[split]), first
        t = train_transform if train else eval_transform
        return self.dataset(samples, t(self.crop_size, self.load_size)), collate_skip

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches that depend only on (seed, epoch, position) and resume mid-epoch exactly
        (`ssl_bench.data.resumable`); under DDP each rank takes its share (the trainer runs with
        ``use_distributed_sampler=False``)."""
        ds, collate = self._trainer_dataset("train", train=True)
        drop_last = len(ds) > self.batch_size
        sampler = EpochBatchSampler(len(ds), self.batch_size, drop_last, self.seed)
        loader = ResumableLoader(ds, sampler, num_workers=self.num_workers, collate_fn=collate,
                                 persistent_workers=self.num_workers > 0)
        if self._resume_at is not None:
            loader.resume_at(*self._resume_at)
            self._resume_at = None
        self._train_loader = loader
        return loader

    def val_dataloader(self) -> DataLoader:
        """In order; under DDP each rank takes a strided part of every batch (no sample twice)."""
        ds, collate = self._trainer_dataset("val", train=False)
        batches = ShardedBatchSampler(BatchSampler(SequentialSampler(ds), self.batch_size, drop_last=False))
        return DataLoader(ds, batch_sampler=batches, num_workers=self.num_workers, collate_fn=collate,
                          persistent_workers=self.num_workers > 0)

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: where the train loader stands, [epoch, batches delivered]."""
        return {"train_progress": list(self._train_loader.progress)} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_at = state_dict.get("train_progress")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Cached train batches arrive as uint8 S x S: random crop + flip them here, on the device;
        encoded batches (data.decode=device) are decoded, resized and cropped here. Every batch's
        skipped files are counted against data.max_skipped_fraction."""
        trainer = getattr(self, "trainer", None)
        training = trainer is not None and trainer.training
        if isinstance(batch, dict) and "encoded" in batch:
            t = train_transform if training else eval_transform
            batch = decode_on_device(batch, t(self.crop_size, self.load_size))
        elif self.decoded_cache is not None and training:  # offsets from the train loader's per-sample seeds
            images = batch["image"]
            top, left, flip = seeded_offsets(batch.pop("seeds"), images.shape[-2], images.shape[-1], self.crop_size)
            batch["image"] = crop_flip(images, top, left, flip, self.crop_size)
        if isinstance(batch, dict) and batch.get("skipped"):
            self.count_skipped("train" if training else "val", batch["skipped"])
        return batch

    def count_skipped(self, split: str, paths: list[str]) -> None:
        """Record undecodable files of a split (each once, however many epochs report it); raise
        `SkippedImagesError` when they exceed data.max_skipped_fraction of the split."""
        seen = self._skipped[split]
        seen.update(dict.fromkeys(paths))
        total = len(self._samples(split))
        if total and len(seen) > self.max_skipped_fraction * total:
            raise SkippedImagesError(
                f"data.max_skipped_fraction={self.max_skipped_fraction}: {len(seen)} of the {total} {split} "
                f"images of data.root={self.root} ({len(seen) / total:.1%}) could not be decoded: "
                f"{skipped_summary(list(seen))}; repair or remove these files, or raise data.max_skipped_fraction")

    @property
    def skipped_by_split(self) -> dict[str, int]:
        """Undecodable files met so far per split, each counted once: {"train": n, "val": m}."""
        return {split: len(seen) for split, seen in self._skipped.items()}

    def first_train_images(self, n: int) -> torch.Tensor:
        """The first ``n`` decodable train images, centre-cropped: uint8 n x 3 x crop x crop
        (data-dependent initialisation measures statistics on them)."""
        chunks, count = [], 0
        for batch in self.split_loader("train", batch_size=min(n, self.batch_size)):
            if not batch["image"].shape[0]:  # all undecodable: its placeholder has another image size
                continue
            chunks.append(batch["image"])
            count += batch["image"].shape[0]
            if count >= n:
                break
        if not count:
            raise DataLayoutError(f"data.root={self.root}: no decodable train image")
        return torch.cat(chunks)[:n]

    def eval_train_dataloader(self) -> DataLoader:
        """Train split with the deterministic eval transform (priors, feature extraction)."""
        return self.split_loader("train")
