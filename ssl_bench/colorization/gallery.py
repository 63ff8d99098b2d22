"""The paper's comparison gallery: colorizations of the same images by several models, side by side.

Zhang et al.'s Figure 2 layout: one row per image with the grey input, the L2, classification and
classification + rebalancing colorizations and the ground truth, written as ``index.html`` beside
one PNG per cell.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ssl_bench import color
from ssl_bench.colorization.colorize import colorize_image, method_name, png_bytes
from ssl_bench.errors import ConfigError
from ssl_bench.io import atomic_write_bytes
from ssl_bench.pretext.colorization import ColorizationPretext

__all__ = ["GALLERY_SIZE", "VARIANTS", "GalleryImage", "resolve_images", "load_gallery_images", "grey_input",
           "write_gallery"]

GALLERY_SIZE = 256  # paper figures: 256 px short side, centre crop
# column key -> the paper's description, in the paper's column order
VARIANTS: dict[str, str] = {
    "l2": "L2 regression",
    "class": "classification",
    "full": "classification + rebalancing",
}
_CELL_RE = re.compile(r"^\d{3,}_(input|l2|class|full|truth)\.png$")

Column = tuple[str, str, str]  # (key, title, subtitle)


def resolve_images(sources: Sequence[str | Path]) -> tuple[list[Path], str]:
    """Image files of folders (recursively, sorted) and of files named directly, in order given.

    Returns (paths, description of the sources for messages). Raises DataLayoutError naming the
    source when a path does not exist or nothing that looks like an image is found.
    """
    from ssl_bench.data.images import IMG_EXTENSIONS, DataLayoutError, list_images
    paths: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            paths += list_images(p)
        elif p.is_file():
            paths.append(p)
        else:
            raise DataLayoutError(f"image source {p} does not exist")
    where = ", ".join(str(s) for s in sources)
    if not paths:
        raise DataLayoutError(f"{where} holds no images (looked for {', '.join(IMG_EXTENSIONS)})")
    return paths, where


@dataclass
class GalleryImage:
    name: str  # source path as given (for captions and messages)
    image: Tensor  # uint8 3 x size x size, resized and centre-cropped


def load_gallery_images(sources: Sequence[str | Path], num: int = 16, size: int = GALLERY_SIZE
                        ) -> tuple[list[GalleryImage], list[tuple[str, str]]]:
    """The first ``num`` readable images of the sources (sorted per folder), resized to ``size`` px
    short side and centre-cropped to size x size; plus (path, reason) of the unreadable files met.

    Raises DataLayoutError when a source is missing, holds no images or none of them is readable.
    """
    from torchvision.transforms import v2 as T

    from ssl_bench.data.images import DECODE_ERRORS, DataLayoutError, decode_rgb
    if num < 1:
        raise ConfigError(f"the gallery needs at least one image, got num={num}")
    paths, where = resolve_images(sources)
    prep = T.Compose([T.Resize(size, antialias=True), T.CenterCrop(size)])
    images: list[GalleryImage] = []
    skipped: list[tuple[str, str]] = []
    for path in paths:
        if len(images) >= num:
            break
        try:
            img = decode_rgb(path)
        except DECODE_ERRORS as e:
            skipped.append((str(path), f"{type(e).__name__}: {e}"))
            continue
        images.append(GalleryImage(str(path), prep(img).contiguous()))
    if not images:
        names = ", ".join(p for p, _ in skipped[:5])
        raise DataLayoutError(f"{where}: no readable image (unreadable: {names})")
    return images, skipped


def grey_input(img: Tensor) -> Tensor:
    """The network's view of an image as a picture: its L with a = b = 0, as uint8 3 x H x W grey.

    The channels are averaged before rounding, so the three are equal (exactly neutral grey)."""
    L = color.l_from_uint8(img[None])
    rgb = color.lab_to_rgb(torch.cat([L, torch.zeros_like(L), torch.zeros_like(L)], 1))[0]
    grey = rgb.mean(0, keepdim=True).mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return grey.expand(3, -1, -1).contiguous()


_CSS = """body{font-family:sans-serif;margin:1.5em;background:#fff;color:#222}
table{border-collapse:collapse}td,th{padding:3px;text-align:center;vertical-align:top}
th{font-weight:600;font-size:0.9em}th small{font-weight:normal;color:#666}
img{display:block;width:256px;height:auto}
.skipped{color:#a00;font-size:0.85em}"""


def _render_html(columns: list[Column], rows: list[tuple[str, list[str]]],
                 skipped: list[tuple[str, str]], note: str) -> str:
    e = html.escape
    head = "".join(f"<th>{e(title)}<br><small>{e(sub)}</small></th>" for _, title, sub in columns)
    body = []
    for i, (name, files) in enumerate(rows):
        cells = "".join(f'<td><img src="{e(f)}" alt="{e(title)}: {e(name)}" title="{e(name)}"></td>'
                        for f, (_, title, _) in zip(files, columns))
        body.append(f'<tr class="image" id="row{i}">{cells}</tr>')
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>Colorization gallery</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>Colorization gallery</h1>", f"<p>{e(note)}</p>",
             f'<table><thead><tr class="caption">{head}</tr></thead>',
             "<tbody>" + "\n".join(body) + "</tbody></table>"]
    if skipped:
        items = "".join(f"<li>{e(p)} ({e(why)})</li>" for p, why in skipped)
        parts.append(f'<div class="skipped"><p>Skipped unreadable files:</p><ul>{items}</ul></div>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _columns(models: dict[str, ColorizationPretext]) -> list[Column]:
    """Input, the models in the paper's order (captioned with what each checkpoint holds), truth."""
    if not models:
        raise ConfigError("the gallery needs at least one colorization model (l2, class or full)")
    unknown = set(models) - set(VARIANTS)
    if unknown:
        raise ConfigError(f"unknown gallery columns {sorted(unknown)}; expected {list(VARIANTS)}")
    columns = [("input", "input", "grey (L only)")]
    columns += [(k, method_name(models[k]), VARIANTS[k]) for k in VARIANTS if k in models]
    columns.append(("truth", "ground truth", "original"))
    return columns


def _write_row(out: Path, prefix: str, item: GalleryImage, columns: list[Column],
               models: dict[str, ColorizationPretext], decode: str, T: float) -> list[str]:
    """Write one image's cells (each atomically); returns their file names in column order."""
    pictures = {"input": grey_input(item.image), "truth": item.image}
    for key in models:
        pictures[key] = colorize_image(models[key], item.image, decode=decode, T=T)[0]
    files = []
    for key, _, _ in columns:
        files.append(f"{prefix}_{key}.png")
        atomic_write_bytes(out / files[-1], png_bytes(pictures[key]))
    return files


def write_gallery(images: Sequence[GalleryImage], models: dict[str, ColorizationPretext], out: str | Path,
                  decode: str = "annealed_mean", T: float = 0.38,
                  skipped: Sequence[tuple[str, str]] = ()) -> Path:
    """Colorize ``images`` with each model (keys among "l2", "class", "full", shown in that order) and
    write OUT/index.html with one PNG per cell; returns the html path.

    Cells are written first, the page last, so a reader never sees a page whose pictures are
    missing; cells of an earlier, longer gallery in OUT are removed afterwards.
    """
    columns = _columns(models)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(len(images) - 1)))
    rows = [(item.name, _write_row(out, f"{i:0{width}d}", item, columns, models, decode, T))
            for i, item in enumerate(images)]
    note = (f"{len(images)} image(s), {GALLERY_SIZE} px centre crops; decoding: {decode}"
            + (f", T = {T:g}" if decode == "annealed_mean" else "") + ".")
    page = out / "index.html"
    atomic_write_bytes(page, _render_html(columns, rows, list(skipped), note).encode("utf-8"))
    written = {f for _, files in rows for f in files}
    for stale in out.iterdir():
        if _CELL_RE.match(stale.name) and stale.name not in written and stale.is_file():
            stale.unlink()
    return page
