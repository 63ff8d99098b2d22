"""Image datasets that decode to uint8 tensors and skip undecodable files instead of crashing.

Only decoding, cropping and flipping happen here (in loader workers); Lab conversion, decimation and
target encoding run batched on the accelerator inside the LightningModule.

Two kinds of failure are kept apart. A file that was read but is not a decodable image (unknown
format, truncated or corrupt data, a decompression bomb) raises `UndecodableImage`: loaders skip it
and count it. A failure to read the file (permission, EIO, too many open files, a stale NFS handle)
is retried a few times and then raises `ImageReadError` naming the file: the data is not at fault,
and skipping it silently would train on whatever subset the file system happened to serve.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from ssl_bench.errors import MissingDataError, StorageError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IO_ATTEMPTS = 3  # transient NFS / EIO hiccups usually pass on a second read
IO_RETRY_DELAY_S = 0.2
SKIPPED_NAMED = 10  # skipped files named in warnings and errors (the rest are counted)
_T = TypeVar("_T")


class DataLayoutError(MissingDataError):
    """A data path is missing or does not have the expected layout (message names the config key)."""


class UndecodableImage(ValueError):
    """The file was read but holds no decodable image (message names the file)."""


class ImageReadError(StorageError):
    """Reading an image file failed at the OS level, also on retrying (message names the file)."""


class SkippedImagesError(DataLayoutError):
    """More undecodable images than ``data.max_skipped_fraction`` allows."""


# What callers catch to skip a file: ``decode_rgb`` raises only UndecodableImage for bad data; the
# PIL types are for code that opens images itself. OSError is deliberately absent (I/O failures).
DECODE_ERRORS = (UndecodableImage, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError)
# what PIL's decoders raise on bad data besides OSError without an errno
_PIL_DATA_ERRORS = (ValueError, SyntaxError, EOFError, IndexError, struct.error, zlib.error,
                    Image.DecompressionBombError)


def is_decode_error(e: BaseException) -> bool:
    """True for PIL's "bad image data" errors, False for OS-level I/O errors. PIL raises a plain
    OSError without errno for truncated or corrupt data ("image file is truncated"); the OS always
    sets one."""
    if isinstance(e, (UndecodableImage, *_PIL_DATA_ERRORS)):
        return True
    return isinstance(e, OSError) and e.errno is None


def read_with_retries(path: Path | str, read: Callable[[], _T]) -> _T:
    """``read()``, retried on OS-level errors; `ImageReadError` naming ``path`` when they persist."""
    last: OSError | None = None
    for attempt in range(IO_ATTEMPTS):
        try:
            return read()
        except OSError as e:
            if e.errno is None:  # PIL's "bad data" OSError: retrying reads the same bytes
                raise
            last = e
            if attempt + 1 < IO_ATTEMPTS:
                time.sleep(IO_RETRY_DELAY_S * (attempt + 1))
    assert last is not None
    raise ImageReadError(last.errno, f"cannot read image file {path} (tried {IO_ATTEMPTS} times): "
                                     f"{last.strerror or last}") from last


def _open_image(source: Any, name: Path | str, use: Callable[[Image.Image], _T]) -> _T:
    """``use(image)`` on PIL's image of ``source`` (a path or a file object); bad data becomes
    `UndecodableImage` naming ``name``, OS errors pass through."""
    try:
        with Image.open(source) as im:
            return use(im)
    except UndecodableImage:
        raise
    except Exception as e:
        if is_decode_error(e):
            raise UndecodableImage(f"undecodable image {name}: {type(e).__name__}: {e}") from e
        raise


def rgb_array(im: Image.Image) -> np.ndarray:
    """uint8 H x W x 3. Greyscale, palette and CMYK images become RGB, alpha is dropped; 16-bit
    greyscale is scaled to 8 bits (PIL's own conversion would clip it to 0/255)."""
    if im.mode.startswith("I;16") or im.mode == "I":
        # "I" is what older Pillows give for 16-bit PNGs: read as the same 0..65535 range
        grey = (np.clip(np.asarray(im).astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def _chw(arr: np.ndarray) -> Tensor:
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def decode_rgb(path: Path) -> Tensor:
    """uint8 3 x H x W (see `rgb_array`). Raises `UndecodableImage` for bad data and
    `ImageReadError` when the file cannot be read."""
    return read_with_retries(path, lambda: _chw(_open_image(path, path, rgb_array)))


def decode_rgb_bytes(data: bytes | np.ndarray, name: Path | str) -> Tensor:
    """`decode_rgb` of a file's bytes (already read); ``name`` is for messages."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else data
    return _chw(_open_image(io.BytesIO(raw), name, rgb_array))


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header; errors as `decode_rgb`."""
    return read_with_retries(path, lambda: _open_image(path, path, lambda im: tuple(im.size)))


def list_images(root: Path, key: str | None = None) -> list[Path]:
    """All image files below root, sorted for determinism. A sub-folder that cannot be listed is a
    `DataLayoutError` naming it (and ``key``): its images would otherwise be left out silently."""
    def unreadable(e: OSError) -> None:
        where = f"{key}={root}: " if key else ""
        raise DataLayoutError(f"{where}cannot list folder {e.filename}: {e.strerror or e}; its images "
                              "would be left out (fix its permissions or remove it)") from e

    found = []
    for folder, _, files in os.walk(root, onerror=unreadable):
        found += [Path(folder, f) for f in files if os.path.splitext(f)[1].lower() in IMG_EXTENSIONS]
    return sorted(p for p in found if p.is_file())


def image_folder_samples(root: Path, key: str) -> tuple[list[tuple[Path, int]], list[str]]:
    """ImageFolder layout ROOT/<class>/<image>: (path, label) pairs and class names. Every
    sub-folder is a class, so an empty one is an error (it would add a class no image belongs to)."""
    if not root.is_dir():
        raise DataLayoutError(f"{key}={root} does not exist; expected a folder of class "
                              f"sub-folders ({root}/<class>/<image>.jpg)")
    try:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    except OSError as e:
        raise DataLayoutError(f"{key}={root}: cannot list the folder: {e.strerror or e}") from e
    samples = []
    for i, c in enumerate(classes):
        images = list_images(root / c, key)
        if not images:
            raise DataLayoutError(f"{key}={root}: class folder {root / c} holds no images "
                                  f"(extensions {', '.join(IMG_EXTENSIONS)}); add images or remove the folder")
        samples += [(p, i) for p in images]
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


class MinSize:
    """Resize (antialiased bilinear, aspect kept) so that the short side is at least ``size``;
    larger images pass unchanged. Keeps tiny images croppable: reflect padding fails once the
    padding exceeds the image."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Tensor) -> Tensor:
        if min(img.shape[-2:]) >= self.size:
            return img
        return TF.resize(img, self.size, antialias=True)

    def __repr__(self) -> str:
        return f"MinSize({self.size})"


def _resize_steps(crop_size: int, load_size: int | None) -> list[Any]:
    steps: list[Any] = [T.Resize(load_size, antialias=True)] if load_size else []
    return steps + [MinSize(crop_size)]


def train_transform(crop_size: int, load_size: int | None) -> T.Compose:
    """The authors' augmentation: resize, random crop, mirror. Output uint8 3 x crop x crop."""
    return T.Compose(_resize_steps(crop_size, load_size)
                     + [T.RandomCrop(crop_size), T.RandomHorizontalFlip()])


def eval_transform(crop_size: int, load_size: int | None) -> T.Compose:
    return T.Compose(_resize_steps(crop_size, load_size) + [T.CenterCrop(crop_size)])


class ImageDataset(Dataset):
    """(path, label) samples decoded to uint8; an undecodable file yields (None, path) (see
    `collate_skip`); an unreadable one raises `ImageReadError`."""

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
    """Stack decodable samples; report undecodable ones so the module can count them.

    Returns {"image": uint8 N x 3 x H x W, "label": int64 N, "skipped": [paths]}; with no decodable
    sample the image tensor is 0 x 3 x 1 x 1 (callers drop empty batches).
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


def skipped_summary(names: Sequence[str]) -> str:
    """The first `SKIPPED_NAMED` names, and how many more there are."""
    shown = ", ".join(names[:SKIPPED_NAMED])
    more = len(names) - SKIPPED_NAMED
    return shown + (f" and {more} more" if more > 0 else "")


class SkipCounter:
    """Counts skipped files over a run, keeps the first few names, and warns once."""

    def __init__(self) -> None:
        self.count = 0
        self.first: str | None = None
        self.names: list[str] = []

    def add(self, paths: Sequence[str]) -> None:
        if not paths:
            return
        if self.first is None:
            self.first = paths[0]
            warnings.warn(f"ssl_bench: skipping unreadable image {paths[0]} (further ones are "
                          "counted silently; total in results.json 'skipped_images')", stacklevel=2)
        self.names += list(paths[:SKIPPED_NAMED - len(self.names)])
        self.count += len(paths)
