"""Image datasets that decode to uint8 tensors and skip unreadable files instead of crashing.

Only decoding, cropping and flipping happen here (in loader workers); Lab conversion, decimation and
target encoding run batched on the accelerator inside the LightningModule.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DECODE_ERRORS = (OSError, ValueError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError)


class DataLayoutError(FileNotFoundError):
    """A data path is missing or does not have the expected layout (message names the config key)."""


def list_images(root: Path) -> list[Path]:
    """All image files below root, sorted for determinism."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())


def image_folder_samples(root: Path, key: str) -> tuple[list[tuple[Path, int]], list[str]]:
    """ImageFolder layout ROOT/<class>/<image>: (path, label) pairs and class names."""
    if not root.is_dir():
        raise DataLayoutError(f"{key}={root} does not exist; expected a folder of class "
                              f"sub-folders ({root}/<class>/<image>.jpg)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    samples = [(p, i) for i, c in enumerate(classes) for p in list_images(root / c)]
    if not samples:
        raise DataLayoutError(f"{key}={root} holds no images; expected {root}/<class>/<image>.jpg "
                              f"with extensions {', '.join(IMG_EXTENSIONS)}")
    return samples, classes


def fingerprint(paths: Sequence[Path], root: Path) -> str:
    """Dataset identity from relative paths and file sizes: cheap (one stat per file) and stable
    across copies of the same tree, unlike mtimes."""
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{p.relative_to(root).as_posix()}\0{os.stat(p).st_size}\n".encode())
    return h.hexdigest()[:20]


def train_transform(crop_size: int, load_size: int | None) -> T.Compose:
    """The authors' augmentation: resize, random crop, mirror. Output uint8 3 x crop x crop."""
    steps: list[Any] = [T.Resize(load_size, antialias=True)] if load_size else []
    steps += [T.RandomCrop(crop_size, pad_if_needed=True, padding_mode="reflect"),
              T.RandomHorizontalFlip()]
    return T.Compose(steps)


def eval_transform(crop_size: int, load_size: int | None) -> T.Compose:
    steps: list[Any] = [T.Resize(load_size, antialias=True)] if load_size else []
    steps += [T.CenterCrop(crop_size)]
    return T.Compose(steps)


def decode_rgb(path: Path) -> Tensor:
    """uint8 3 x H x W. Greyscale, palette and CMYK files become RGB (grey images are valid input)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


class ImageDataset(Dataset):
    """(path, label) samples decoded to uint8; an unreadable file yields None (see `collate_skip`)."""

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: T.Compose | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int] | tuple[None, str]:
        path, label = self.samples[index]
        try:
            img = decode_rgb(path)
        except DECODE_ERRORS:
            return None, str(path)
        if self.transform is not None:
            img = self.transform(img)
        return img, label


def collate_skip(batch: list[tuple[Any, Any]]) -> dict[str, Any]:
    """Stack decodable samples; report unreadable ones so the module can count them.

    Returns {"image": uint8 N x 3 x H x W, "label": int64 N, "skipped": [paths]}.
    """
    good = [(img, lab) for img, lab in batch if img is not None]
    skipped = [lab for img, lab in batch if img is None]
    if good:
        images = torch.stack([g[0] for g in good])
        labels = torch.tensor([g[1] for g in good], dtype=torch.long)
    else:
        images = torch.empty(0, 3, 1, 1, dtype=torch.uint8)
        labels = torch.empty(0, dtype=torch.long)
    return {"image": images, "label": labels, "skipped": skipped}


class SkipCounter:
    """Counts skipped files over a run and warns once, naming the first one."""

    def __init__(self) -> None:
        self.count = 0
        self.first: str | None = None

    def add(self, paths: Sequence[str]) -> None:
        if not paths:
            return
        if self.first is None:
            self.first = paths[0]
            warnings.warn(f"ssl_bench: skipping unreadable image {paths[0]} (further ones are "
                          "counted silently; total in results.json 'skipped_images')", stacklevel=2)
        self.count += len(paths)
