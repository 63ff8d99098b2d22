"""One LightningDataModule for every image source: ImageNet folders, any folder, the synthetic set."""

from __future__ import annotations

import random
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ssl_bench.data.images import (DataLayoutError, ImageDataset, collate_skip, eval_transform,
                                   fingerprint, image_folder_samples, list_images, train_transform)
from ssl_bench.data.synthetic import SyntheticSpec, generate


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
    """

    def __init__(self, root: str, layout: str = "imagefolder", crop_size: int = 176,
                 load_size: int | None = 256, batch_size: int = 80, num_workers: int = 2,
                 val_fraction: float = 0.02, max_train_images: int | None = None,
                 synthetic: SyntheticSpec | None = None, seed: int = 0) -> None:
        super().__init__()
        if layout not in ("imagefolder", "folder"):
            raise ValueError(f"data.layout: expected 'imagefolder' or 'folder', got {layout!r}")
        self.root, self.layout = Path(root).expanduser(), layout
        self.crop_size, self.load_size = crop_size, load_size
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_fraction, self.max_train_images = val_fraction, max_train_images
        self.synthetic, self.seed = synthetic, seed
        self.classes: list[str] = []
        self.train_samples: list[tuple[Path, int]] = []
        self.val_samples: list[tuple[Path, int]] = []
        self._fingerprint: str | None = None

    def prepare_data(self) -> None:
        if self.synthetic is not None:
            generate(self.root, self.synthetic)

    def setup(self, stage: str | None = None) -> None:
        if self.train_samples:
            return
        if self.layout == "imagefolder":
            if not self.root.is_dir():
                raise DataLayoutError(
                    f"data.root={self.root} does not exist; expected ROOT/train/<class>/*.JPEG and "
                    "ROOT/val/<class>/*.JPEG (ImageNet layout)")
            self.train_samples, self.classes = image_folder_samples(self.root / "train", "data.root (train/)")
            self.val_samples, val_classes = image_folder_samples(self.root / "val", "data.root (val/)")
            if val_classes != self.classes:
                raise DataLayoutError(f"data.root={self.root}: train/ and val/ have different class "
                                      f"folders ({len(self.classes)} vs {len(val_classes)})")
        else:
            if not self.root.is_dir():
                raise DataLayoutError(f"data.root={self.root} does not exist; expected a folder of "
                                      "images (searched recursively)")
            paths = list_images(self.root)
            if len(paths) < 2:
                raise DataLayoutError(f"data.root={self.root} holds {len(paths)} image(s); expected "
                                      "a folder of images (searched recursively)")
            order = list(range(len(paths)))
            random.Random(self.seed).shuffle(order)
            n_val = max(1, int(round(self.val_fraction * len(paths))))
            self.val_samples = [(paths[i], -1) for i in sorted(order[:n_val])]
            self.train_samples = [(paths[i], -1) for i in sorted(order[n_val:])]
        if self.max_train_images and len(self.train_samples) > self.max_train_images:
            rng = random.Random(self.seed)
            self.train_samples = sorted(rng.sample(self.train_samples, self.max_train_images))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def fingerprint(self) -> str:
        """Identity of the train split (one stat per file, so computed once)."""
        if self._fingerprint is None:
            self.setup()
            self._fingerprint = fingerprint([p for p, _ in self.train_samples], self.root)
        return self._fingerprint

    def loader(self, samples, train: bool, batch_size: int | None = None) -> DataLoader:
        """Loader over any (path, label) list: train = random crop + flip + shuffle, else centre crop."""
        t = train_transform if train else eval_transform
        bs = batch_size or self.batch_size
        return DataLoader(ImageDataset(samples, t(self.crop_size, self.load_size)), batch_size=bs,
                          shuffle=train, drop_last=train and len(samples) > bs,
                          num_workers=self.num_workers, collate_fn=collate_skip,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_samples, train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_samples, train=False)

    def first_train_images(self, n: int) -> torch.Tensor:
        """The first ``n`` decodable train images, centre-cropped: uint8 n x 3 x crop x crop
        (data-dependent initialisation measures statistics on them)."""
        chunks, count = [], 0
        for batch in self.loader(self.train_samples, train=False, batch_size=min(n, self.batch_size)):
            chunks.append(batch["image"])
            count += batch["image"].shape[0]
            if count >= n:
                break
        if not count:
            raise DataLayoutError(f"data.root={self.root}: no decodable train image")
        return torch.cat(chunks)[:n]

    def eval_train_dataloader(self) -> DataLoader:
        """Train split with the deterministic eval transform (priors, feature extraction)."""
        return self.loader(self.train_samples, train=False)
