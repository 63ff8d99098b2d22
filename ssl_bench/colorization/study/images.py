"""The study's pictures: 256 x 256 crops of the real images, their colorizations and the sentinels.

Every readable image below a folder becomes three PNGs in a cache folder, under opaque random names
(a URL never tells which side is real), listed in ``manifest.json`` beside them.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssl_bench.colorization.study import UserError
from ssl_bench.io import atomic_write_text

if TYPE_CHECKING:  # torch is imported where pictures are made: the results command does without it
    from torch import Tensor

    from ssl_bench.pretext.colorization import ColorizationPretext

__all__ = ["IMAGE_SIZE", "DEFAULT_T", "ImageItem", "square_crop", "sentinel_images", "prepare_images"]

IMAGE_SIZE = 256  # the paper showed 256 x 256
DEFAULT_T = 0.38  # the paper's annealed-mean temperature


@dataclass(frozen=True)
class ImageItem:
    """One source image: its id (path below the image folder) and the cache file names of its three versions."""

    image_id: str
    real: str
    fake: str
    sentinel: str


def square_crop(path: Path, size: int = IMAGE_SIZE) -> Tensor:
    """uint8 3 x size x size: short side resized to ``size`` (bicubic), then centre-cropped."""
    import torch
    from PIL import Image

    from ssl_bench.data.images import decode_rgb
    # the suite's one decoder: same colour conversions, bad data told apart from I/O errors
    im = Image.fromarray(decode_rgb(path).permute(1, 2, 0).numpy())
    w, h = im.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    arr = np.asarray(im.crop((left, top, left + size, top + size)))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def sentinel_images(crops: Sequence[Tensor], rng: random.Random) -> list[Tensor]:
    """Each crop's L with random colours: ab of another random crop, or (single image) a hue rotation."""
    import torch

    from ssl_bench import color
    from ssl_bench.colorization.colorize import to_uint8
    lab = color.rgb_to_lab(torch.stack(list(crops)))
    out = []
    for i in range(len(crops)):
        if len(crops) > 1:
            j = rng.choice([k for k in range(len(crops)) if k != i])
            ab = lab[j, 1:]
        else:
            theta = np.deg2rad(rng.uniform(90.0, 270.0))
            c, s = float(np.cos(theta)), float(np.sin(theta))
            a, b = lab[i, 1], lab[i, 2]
            ab = torch.stack([c * a - s * b, s * a + c * b])
        rgb = color.lab_to_rgb(torch.cat([lab[i, :1], ab], 0)[None].double())[0]
        out.append(to_uint8(rgb))
    return out


def _read_crops(data: Path, log: Callable[..., Any]) -> tuple[list[Tensor], list[str]]:
    """Crops of the readable images below ``data`` and their ids; unreadable files are logged."""
    from ssl_bench.data.images import DECODE_ERRORS, list_images
    paths = list_images(data)
    if not paths:
        raise UserError(f"image folder {data} holds no images")
    crops, ids = [], []
    for p in paths:
        try:
            crops.append(square_crop(p))
        except DECODE_ERRORS as e:
            log(f"skipping unreadable image {p}: {e}", file=sys.stderr)
            continue
        ids.append(p.relative_to(data).as_posix())
    if not crops:
        raise UserError(f"image folder {data}: none of its {len(paths)} image(s) could be read")
    return crops, ids


def _opaque_items(ids: Sequence[str]) -> list[ImageItem]:
    salt = secrets.token_hex(8)

    def name(image_id: str, kind: str) -> str:
        return hashlib.sha256(f"{salt}/{image_id}/{kind}".encode()).hexdigest()[:20] + ".png"

    return [ImageItem(i, name(i, "real"), name(i, "fake"), name(i, "sentinel")) for i in ids]


def _fresh_cache(cache: Path) -> Path:
    """The cache folder, emptied of an earlier study's pictures."""
    cache.mkdir(parents=True, exist_ok=True)
    for old in cache.glob("*.png"):
        old.unlink()
    return cache


def prepare_images(data: str | Path, colorizer: ColorizationPretext | str | Path, cache_dir: str | Path, *,
                   T: float = DEFAULT_T, seed: int = 0, log: Callable[..., Any] = print) -> list[ImageItem]:
    """Ground truth, colorization and sentinel PNGs of every readable image below ``data``.

    colorizer: a colorization model (see ``load_colorizer``) or its checkpoint. The colorization is
    the annealed mean at temperature T with the image's own L; sentinel colours are drawn with ``seed``.
    """
    from ssl_bench.colorization.colorize import colorize_image, load_colorizer, method_name, save_png
    data = Path(data)
    model = load_colorizer(colorizer) if isinstance(colorizer, (str, Path)) else colorizer
    crops, ids = _read_crops(data, log)
    cache, items = _fresh_cache(Path(cache_dir)), _opaque_items(ids)
    for crop, it in zip(crops, items):
        save_png(crop, cache / it.real)
        save_png(colorize_image(model, crop, "annealed_mean", T)[0], cache / it.fake)
    for sentinel, it in zip(sentinel_images(crops, random.Random(seed)), items):
        save_png(sentinel, cache / it.sentinel)
    manifest = {"data": str(data), "checkpoint": getattr(model, "source_path", None), "temperature": T,
                "colorizer": method_name(model), "images": [it.__dict__ for it in items]}
    atomic_write_text(cache / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    log(f"prepared {len(items)} image(s) in {cache} (colorizer: {method_name(model)})")
    return items
