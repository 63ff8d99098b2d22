"""Data sets distributed as decoded uint8 arrays (CIFAR's pickles, STL-10's binaries).

Their images need no decoding, so nothing is ever skipped, and there is no file to cache or to decode
on the device: each sample is cut out of the array and goes through the same crop and flip transforms
as a decoded image file (`ssl_bench.data.images.train_transform` / `eval_transform`). A sample is
(global index, label): the index runs over the parts of the train split, then those of the val split,
so one dataset serves any subset of either split (the probe's holdout, ``data.max_train_images``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ssl_bench.data.datamodule import ImageDataModule
from ssl_bench.errors import DataError


class ImageArray(Protocol):
    """N images, each a uint8 3 x H x W array (a numpy array, or a reader of a file)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


@dataclass
class ArrayPart:
    """One file's worth of a split: images (N x 3 x H x W uint8) and labels (int64 N; -1 = unlabelled)."""

    images: ImageArray
    labels: np.ndarray
    source: Path

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise DataError(f"{self.source}: {len(self.images)} images but {len(self.labels)} labels")


@dataclass
class ArraySplits:
    """What a reader found: the parts of each split, the class names (label i = classes[i]), the
    files read (the fingerprint hashes their names and sizes)."""

    train: list[ArrayPart]
    val: list[ArrayPart]
    classes: list[str]
    files: list[Path]


class SegmentedImages:
    """Several `ImageArray` parts seen as one: global index -> (part, index in the part)."""

    def __init__(self, parts: Sequence[ImageArray]) -> None:
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> np.ndarray:
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.parts[part][index - int(self.starts[part])]


class ArrayDataset(Dataset):
    """(global index, label) samples of a `SegmentedImages`: (transform(uint8 3 x H x W), label),
    the pairs `ssl_bench.data.images.collate_skip` stacks."""

    def __init__(self, images: SegmentedImages, samples: Sequence[tuple[int, int]], transform: Any = None) -> None:
        self.images, self.samples, self.transform = images, list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        position, label = self.samples[index]
        img = torch.from_numpy(np.ascontiguousarray(self.images[position]))
        return (self.transform(img) if self.transform is not None else img), label


def part_samples(parts: Sequence[ArrayPart], start: int) -> list[tuple[int, int]]:
    """(global index, label) of every image of ``parts``, numbered from ``start``."""
    labels = np.concatenate([p.labels for p in parts]) if parts else np.zeros(0, np.int64)
    return [(start + i, int(y)) for i, y in enumerate(labels.tolist())]


def extracted_folder(root: Path, folder: str, marker: str) -> Path:
    """ROOT/<folder> as the archive extracts it, or ROOT itself when it holds ``marker`` directly."""
    if (root / folder / marker).is_file() or not (root / marker).is_file():
        return root / folder
    return root


class ArrayDataModule(ImageDataModule):
    """`ImageDataModule` over a data set stored as decoded arrays; subclasses implement `read`.

    ``max_skipped_fraction`` is accepted for a uniform ``data`` config, and never reached: decoded
    arrays hold no undecodable image. A train split that holds unlabelled images (STL-10's unlabelled
    part) has no classes (``num_classes`` = 0), like ``data=folder``: pretexts that need no label
    train on it, the probes and the supervised pretext refuse it.
    """

    def __init__(self, root: str, crop_size: int, load_size: int | None, batch_size: int = 128,
                 num_workers: int = 2, max_train_images: int | None = None, seed: int = 0,
                 max_skipped_fraction: float = 0.05) -> None:
        super().__init__(root, layout="imagefolder", crop_size=crop_size, load_size=load_size,
                         batch_size=batch_size, num_workers=num_workers, max_train_images=max_train_images,
                         seed=seed, max_skipped_fraction=max_skipped_fraction)
        self.images: SegmentedImages | None = None
        self.files: list[Path] = []

    def read(self) -> ArraySplits:
        """The data set's splits, read from under ``self.root``."""
        raise NotImplementedError

    def find_samples(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[str]]:
        found = self.read()
        self.images = SegmentedImages([p.images for p in found.train + found.val])
        self.files = found.files
        train = part_samples(found.train, 0)
        val = part_samples(found.val, len(train))
        labelled = all(y >= 0 for _, y in train)
        return train, val, found.classes if labelled else []

    def dataset(self, samples: list, transform: Any) -> Dataset:
        self._discover()
        assert self.images is not None
        return ArrayDataset(self.images, samples, transform)

    @property
    def fingerprint(self) -> str:
        """Identity of the train split: the files read (relative names and sizes) and the images of
        them in the train split (``data.max_train_images`` picks a subset)."""
        if self._fingerprint is None:
            self._discover()
            h = hashlib.sha256()
            for f in self.files:
                h.update(f"{os.path.relpath(f, self.root)}\0{os.stat(f).st_size}\n".encode())
            h.update(np.asarray([i for i, _ in self.train_samples], np.int64).tobytes())
            self._fingerprint = h.hexdigest()[:20]
        return self._fingerprint
