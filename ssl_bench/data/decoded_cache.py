"""A pre-decoded uint8 copy of a dataset split, memory-mapped, so that training reads pixels instead of
decoding JPEGs every epoch.

Layout of one split cache (``ssl-bench data cache`` writes ``OUT/train`` and/or ``OUT/val``; the
``data.decoded_cache`` folder of the datamodule holds the same two sub-folders):

    <split dir>/meta.json    source root, split, file-list fingerprint, size S, N, class names, skipped files
    <split dir>/images.u8    uint8 N x 3 x S x S, C-contiguous (channels first: a row is one image in
                             the N x 3 x H x W format the loaders yield; no permute on read)
    <split dir>/labels.npy   int64 N (-1 for unlabelled folders)

Each image is decoded with `decode_rgb`, its short side resized to S (antialiased bilinear on the
uint8 tensor, i.e. exactly what torchvision's ``Resize(S, antialias=True)`` in `train_transform`
does), then centre-cropped to S x S.

Deviation from the file path: the train-time random crop (`crop_flip` at `seeded_offsets`) is taken from the
central S x S square of each image, not from the full resized rectangle; eval centre crops are the same
up to a one-pixel rounding of the offset. With ``data.load_size=null`` (the synthetic set), S is the
short side of the first readable image (all synthetic images are square, so nothing is lost).

The cache is written in a temporary folder next to the target and moved into place with
``os.replace`` only when complete (meta.json last), so a killed build never leaves a folder that a
later run trusts. A cache whose file-list fingerprint or size does not match the dataset raises
`DecodedCacheMismatch` (naming the folder and ``data.decoded_cache``) instead of being reused.
Undecodable images are skipped, named in meta.json, and reported by the reader in the batches' "skipped"
lists once per epoch, as the file loaders do; a file that cannot be read (an I/O error) stops the build
(`ssl_bench.data.images.ImageReadError`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from ssl_bench.data.images import (
    DECODE_ERRORS,
    DataLayoutError,
    decode_rgb,
    decode_rgb_bytes,
    fingerprint,
    image_size,
    read_with_retries,
)
from ssl_bench.errors import ConfigError, OutputExistsError

FORMAT_VERSION = 1
CONFIG_KEY = "data.decoded_cache"


class DecodedCacheMismatch(DataLayoutError):
    """A decoded cache exists but was built from other files or at another size."""


# ----------------------------------------------------------------------------------------- building

def native_size(paths: Sequence[Path]) -> int:
    """Short side of the first decodable image (header only): the cache size when data.load_size=null."""
    for p in paths:
        try:
            return int(min(image_size(p)))
        except DECODE_ERRORS:
            continue
    raise DataLayoutError(f"no decodable image among {len(paths)} files (first: {paths[0] if paths else None})")


def decode_square(path: Path, size: int) -> Tensor:
    """uint8 3 x size x size: decode, short side -> size (antialiased bilinear), centre crop."""
    img = decode_rgb(path)
    if min(img.shape[-2:]) != size:
        img = TF.resize(img, size, antialias=True)
    if img.shape[-2:] != (size, size):
        img = TF.center_crop(img, [size, size])
    return img.contiguous()


def _decode_task(args: tuple[str, int]) -> np.ndarray | None:
    path, size = args
    try:
        return decode_square(Path(path), size).numpy()
    except DECODE_ERRORS:
        return None


def _decoded(paths: Sequence[Path], size: int, workers: int) -> Iterator[np.ndarray | None]:
    """Decoded squares in input order (None for undecodable files); a process pool when workers > 1."""
    tasks = [(str(p), size) for p in paths]
    if workers <= 1:
        yield from map(_decode_task, tasks)
        return
    pool = ProcessPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,))
    try:
        yield from pool.map(_decode_task, tasks, chunksize=max(1, min(64, len(tasks) // (8 * workers))))
    finally:  # interrupted: drop the queued chunks instead of decoding the rest of the dataset
        pool.shutdown(wait=True, cancel_futures=True)


def preallocated_memmap(path: Path, dtype: Any, shape: tuple[int, ...]) -> np.memmap:
    """A writable memmap whose blocks are reserved on disk first: on a full disk this raises an
    OSError naming the file, where writing through a sparse map would kill the process with SIGBUS."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    with open(path, "wb") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, max(nbytes, 1))
        except OSError as e:
            raise OSError(e.errno, f"not enough disk space for {path} ({nbytes / 2**20:.0f} MiB): {e.strerror}") from e
    return np.memmap(path, dtype=dtype, mode="r+", shape=shape)


def build_cache(out: str | Path, samples: Sequence[tuple[Path, int]], root: str | Path, size: int, *,
                split: str = "train", classes: Sequence[str] = (), workers: int = 0,
                overwrite: bool = False, progress: bool = True) -> Path:
    """Decode ``samples`` ((path, label) pairs, in loader order) into a split cache at ``out``.

    Returns ``out``. Raises FileExistsError when ``out`` exists and overwrite is False.
    """
    out, root = Path(out).expanduser(), Path(root).expanduser()
    if out.exists() and not overwrite:
        raise OutputExistsError(f"decoded cache {out} exists (pass --overwrite to rebuild it)")
    if size < 1:
        raise ConfigError(f"decoded cache size must be positive, got {size}")
    paths = [Path(p) for p, _ in samples]
    n_total = len(paths)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building."))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the cache is shared like the data
    try:
        from tqdm.auto import tqdm
        mm = preallocated_memmap(tmp / "images.u8", np.uint8, (max(n_total, 1), 3, size, size))
        labels: list[int] = []
        skipped_files: list[str] = []
        skipped_indices: list[int] = []
        row = 0
        bar = tqdm(total=n_total, desc=f"decoding {split} -> {out}", unit="img", disable=not progress)
        for i, arr in enumerate(_decoded(paths, size, workers)):
            if arr is None:
                skipped_files.append(_rel(paths[i], root))
                skipped_indices.append(i)
            else:
                mm[row] = arr
                labels.append(int(samples[i][1]))
                row += 1
            bar.update(1)
        bar.close()
        mm.flush()
        del mm
        with open(tmp / "images.u8", "r+b") as f:  # skipped files: shrink to the rows written
            f.truncate(row * 3 * size * size)
        np.save(tmp / "labels.npy", np.asarray(labels, dtype=np.int64))
        meta = {"format_version": FORMAT_VERSION, "layout": "N x 3 x S x S uint8 (images.u8, raw C order)",
                "source_root": str(root), "split": split, "fingerprint": fingerprint(paths, root),
                "size": size, "n": row, "n_total": n_total, "classes": list(classes),
                "resize": "short side -> size, antialiased bilinear (torchvision Resize), centre crop size x size",
                "num_skipped": len(skipped_files), "skipped_files": skipped_files,
                "skipped_indices": skipped_indices}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if out.exists():
            if not overwrite:  # another process finished the same build first: keep its cache
                shutil.rmtree(tmp, ignore_errors=True)
                return out
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


# ------------------------------------------------------------------------------------------ reading

def read_meta(cache: str | Path) -> dict[str, Any] | None:
    """The split cache's meta.json, or None when the folder is not a complete cache."""
    f = Path(cache) / "meta.json"
    if not f.is_file():
        return None
    meta = json.loads(f.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        return None
    return meta


def check_cache(cache: str | Path, samples: Sequence[tuple[Path, int]], root: str | Path, size: int,
                key: str = CONFIG_KEY, dataset_fingerprint: str | None = None) -> dict[str, Any]:
    """meta.json of a cache that matches the dataset split; DecodedCacheMismatch otherwise."""
    cache = Path(cache)
    meta = read_meta(cache)
    hint = (f"delete it, point {key} elsewhere, or rebuild it with "
            f"`ssl-bench data cache --root {root} --out {cache.parent} --size {size} --overwrite`")
    if meta is None:
        raise DecodedCacheMismatch(f"{key}: {cache} is not a complete decoded cache (no valid meta.json); {hint}")
    fp = dataset_fingerprint or fingerprint([Path(p) for p, _ in samples], Path(root))
    problems = []
    if meta["fingerprint"] != fp or meta["n_total"] != len(samples):
        problems.append(f"it was built from other files ({meta['n_total']} files, fingerprint "
                        f"{meta['fingerprint']}; the dataset has {len(samples)}, fingerprint {fp})")
    if meta["size"] != size:
        problems.append(f"its images are {meta['size']} px, the data config needs {size} px "
                        "(data.load_size, or the native size when it is null)")
    expected = meta["n"] * 3 * meta["size"] ** 2
    if (cache / "images.u8").stat().st_size != expected:
        problems.append(f"images.u8 has {(cache / 'images.u8').stat().st_size} bytes, expected {expected}")
    if problems:
        raise DecodedCacheMismatch(f"{key}: decoded cache {cache} does not match data.root={root}: "
                                   + "; ".join(problems) + f"; {hint}")
    return meta


class DecodedImages(Dataset):
    """Batched reads from a split cache, in the format of `collate_skip`.

    Indexed by positions in the source sample list (so ``len`` and the shuffle/drop_last behaviour
    match the file loader, and an unreadable file is reported in "skipped" once per epoch).
    ``ds[list_of_positions]`` (or ``__getitems__``, which a DataLoader with batch_size calls) returns
    {"image": uint8 B x 3 x H x W, "label": int64 B, "skipped": [paths]}: H = W = S (train: crop and
    flip on the accelerator with `crop_flip`) or = ``crop`` (eval: centre crop in the reader).
    Use either ``DataLoader(ds, batch_size=B, collate_fn=first)`` or
    ``DataLoader(ds, sampler=BatchSampler(...), batch_size=None)``.
    """

    def __init__(self, cache: str | Path, crop: int | None = None, meta: dict[str, Any] | None = None) -> None:
        self.dir = Path(cache)
        self.meta = meta or read_meta(self.dir)
        if self.meta is None:
            raise DecodedCacheMismatch(f"{CONFIG_KEY}: {self.dir} is not a complete decoded cache")
        self.size, self.n = int(self.meta["size"]), int(self.meta["n"])
        if crop is not None and crop > self.size:
            raise ConfigError(f"data.crop_size={crop} is larger than the decoded cache's {self.size} px images")
        self.crop = crop
        self.labels = np.load(self.dir / "labels.npy")
        n_total = int(self.meta["n_total"])
        self.row_of = np.full(n_total, -1, dtype=np.int64)
        keep = np.ones(n_total, dtype=bool)
        keep[np.asarray(self.meta["skipped_indices"], dtype=np.int64)] = False
        self.row_of[keep] = np.arange(self.n)
        root = Path(self.meta["source_root"])
        self.skipped_name = {int(i): str(root / f) for i, f in zip(self.meta["skipped_indices"],
                                                                   self.meta["skipped_files"])}
        self._images: np.memmap | None = None

    def __getstate__(self) -> dict[str, Any]:  # loader workers open their own map
        return {**self.__dict__, "_images": None}

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = (np.memmap(self.dir / "images.u8", dtype=np.uint8, mode="r",
                                      shape=(self.n, 3, self.size, self.size))
                            if self.n else np.empty((0, 3, self.size, self.size), np.uint8))
        return self._images

    def __len__(self) -> int:
        return len(self.row_of)

    def __getitems__(self, positions: Sequence[int]) -> dict[str, Any]:
        return self[list(positions)]

    def __getitem__(self, positions: Any) -> dict[str, Any]:
        pos = np.atleast_1d(np.asarray(positions, dtype=np.int64))
        rows = self.row_of[pos]
        skipped = [self.skipped_name[int(p)] for p in pos[rows < 0]]
        kept = pos[rows >= 0]
        order = np.argsort(rows[rows >= 0], kind="stable")
        rows, kept = rows[rows >= 0][order], kept[order]  # sorted: sequential reads from the map
        if self.crop is not None and self.crop < self.size:
            o = int(round((self.size - self.crop) / 2.0))  # torchvision CenterCrop's offset
            sl = slice(o, o + self.crop)
        else:
            sl = slice(None)
        if len(rows):  # one gather from the map straight into a new contiguous array
            images = torch.from_numpy(np.ascontiguousarray(self.images[rows, :, sl, sl]))
        else:
            side = self.crop or self.size
            images = torch.empty(0, 3, side, side, dtype=torch.uint8)
        return {"image": images, "label": torch.from_numpy(self.labels[rows].astype(np.int64)), "skipped": skipped,
                "index": torch.from_numpy(kept)}  # the dataset position of each returned image


def first(batch: Any) -> Any:
    """collate_fn for a dataset whose ``__getitems__`` already returns the batch (picklable)."""
    return batch


# ------------------------------------------------------------------------------ accelerator augment

def crop_flip(images: Tensor, top: Tensor, left: Tensor, flip: Tensor, crop: int) -> Tensor:
    """Per-sample crops at (top, left), mirrored where ``flip``: N x C x H x W -> N x C x crop x crop.

    One advanced-indexing gather (no loop over samples); runs wherever ``images`` lives.
    """
    n, c = images.shape[:2]
    dev = images.device
    ar = torch.arange(crop, device=dev)
    rows = top.to(dev).long()[:, None] + ar  # N x crop
    cols = left.to(dev).long()[:, None] + ar
    cols = torch.where(flip.to(dev).bool()[:, None], cols.flip(1), cols)
    return images[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def seeded_offsets(seeds: Tensor, height: int, width: int, crop: int) -> tuple[Tensor, Tensor, Tensor]:
    """(top, left, flip) per sample from its own 63-bit seed (``ssl_bench.data.resumable.mix_seed``
    output, uniform bits): the crop then depends on the sample's (seed, epoch, position) only, not
    on any generator's history. seeds: int64 N."""
    if crop > min(height, width):
        raise ValueError(f"crop {crop} is larger than the {height} x {width} images")
    top = seeds % (height - crop + 1)
    left = (seeds >> 21) % (width - crop + 1)
    flip = ((seeds >> 42) & 1).bool()
    return top, left, flip


# ----------------------------------------------------- data.decode=device: JPEG decoding on the device

class EncodedBatch:
    """File bytes of a batch, kept on the host by Lightning's batch transfer (not a tensor, no ``.to``):
    nvJPEG reads its input from host memory."""

    def __init__(self, data: list[np.ndarray], paths: list[str]) -> None:
        self.data, self.paths = data, paths

    def __len__(self) -> int:
        return len(self.data)


class EncodedImages(Dataset):
    """(path, label) samples as raw file bytes (uint8 numpy); a file that cannot be read raises
    `ImageReadError` (after retries) naming it; undecodable bytes are found on the device."""

    def __init__(self, samples: Sequence[tuple[Path, int]]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        path, label = self.samples[index]
        data = read_with_retries(path, Path(path).read_bytes)
        return (np.frombuffer(data, dtype=np.uint8), str(path)), label


def collate_encoded(batch: list[tuple[Any, Any]]) -> dict[str, Any]:
    """{"encoded": EncodedBatch, "label": int64 N, "skipped": [paths]}; `decode_on_device` turns it into
    the `collate_skip` format once on the device."""
    good = [(enc, lab) for enc, lab in batch if enc is not None]
    return {"encoded": EncodedBatch([e[0] for e, _ in good], [e[1] for e, _ in good]),
            "label": torch.tensor([lab for _, lab in good], dtype=torch.long),
            "skipped": [lab for enc, lab in batch if enc is None]}


# Substrings of the errors torchvision's JPEG decoders raise for bad data: on the CPU "Image is
# incomplete or truncated" and libjpeg's messages ("Not a JPEG file", "Corrupt JPEG data", "Bogus
# marker length", ...); on CUDA nvJPEG's status failures ("Failed to get image info"), all wrapped in
# "Error while decoding JPEG images".
_DATA_ERROR_MARKERS = ("JPEG", "truncated", "incomplete", "marker", "Huffman", "Failed to get image info",
                       "chroma subsampling", "Premature end", "Corrupt", "Bogus", "Unsupported")
# Device and memory failures, also inside that wrapper (an allocation fails while decoding): never
# "bad data".
_DEVICE_ERROR_MARKERS = ("out of memory", "not enough memory", "cuda", "device", "nvjpeg", "allocator",
                         "execution_failed", "internal_error", "not initialized")
_JPEG_MAGIC = b"\xff\xd8\xff"


def is_decode_failure(e: RuntimeError) -> bool:
    """True when a device decoder's error says the file's data is bad; False for out-of-memory,
    device and any other errors, which must stop the run instead of turning images into skips."""
    if isinstance(e, torch.cuda.OutOfMemoryError) or type(e).__name__ == "AcceleratorError":
        return False
    msg = str(e)
    if any(m in msg.lower() for m in _DEVICE_ERROR_MARKERS):
        return False
    return any(m in msg for m in _DATA_ERROR_MARKERS)


def _decode_one(data: np.ndarray, path: str, device: torch.device) -> Tensor | None:
    """One file: ``decode_jpeg`` on ``device`` for JPEGs; other formats, and JPEGs it rejects
    (nvJPEG lacks e.g. CMYK), through `decode_rgb_bytes` on the CPU, as the file loader decodes them.
    None = undecodable."""
    from torchvision.io import ImageReadMode, decode_jpeg
    if data[:3].tobytes() == _JPEG_MAGIC:
        try:
            return decode_jpeg(torch.from_numpy(data.copy()), mode=ImageReadMode.RGB, device=device)
        except RuntimeError as e:
            if not is_decode_failure(e):
                raise
    try:
        return decode_rgb_bytes(data, path).to(device)
    except DECODE_ERRORS:
        return None


def _decode_all(data: list[np.ndarray], paths: list[str], device: torch.device) -> list[Tensor | None]:
    """uint8 3 x H x W per file on ``device`` (None = undecodable). The JPEGs go through one batched
    ``decode_jpeg`` call (nvJPEG on CUDA); when it reports bad data (a corrupt file), and for the
    other files, each file is decoded on its own (`_decode_one`)."""
    from torchvision.io import ImageReadMode, decode_jpeg
    out: list[Tensor | None] = [None] * len(data)
    jpegs = [i for i, a in enumerate(data) if a[:3].tobytes() == _JPEG_MAGIC]
    done: set[int] = set()
    if jpegs:
        try:  # frombuffer arrays are read-only: copy
            batch = decode_jpeg([torch.from_numpy(data[i].copy()) for i in jpegs], mode=ImageReadMode.RGB,
                                device=device)
            out = [dict(zip(jpegs, batch)).get(i) for i in range(len(data))]
            done = set(jpegs)
        except RuntimeError as e:
            if not is_decode_failure(e):
                raise
    for i in range(len(data)):
        if i not in done:
            out[i] = _decode_one(data[i], paths[i], device)
    return out


def decode_on_device(batch: dict[str, Any], transform: Any) -> dict[str, Any]:
    """Decode an encoded batch where its labels live (the accelerator), apply ``transform`` (the file
    path's `train_transform` / `eval_transform`: resize, crop, flip) to each image, and return the
    `collate_skip` format; undecodable files join "skipped"."""
    enc: EncodedBatch = batch["encoded"]
    device = batch["label"].device
    decoded = _decode_all(enc.data, enc.paths, device)
    keep = [i for i, img in enumerate(decoded) if img is not None]
    skipped = list(batch["skipped"]) + [enc.paths[i] for i, img in enumerate(decoded) if img is None]
    if keep:  # sizes differ before the transform: one image at a time
        images = torch.stack([transform(decoded[i]) for i in keep])
    else:
        images = torch.empty(0, 3, 1, 1, dtype=torch.uint8, device=device)
    labels = batch["label"][torch.tensor(keep, dtype=torch.long, device=device)]
    return {"image": images, "label": labels, "skipped": skipped}
