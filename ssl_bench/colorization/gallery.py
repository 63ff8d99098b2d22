"""Pictures of the colorization results: the paper's comparison gallery and the ab prior figure.

    ssl-bench gallery --data DIR_OR_IMAGES [--l2 CKPT] [--class CKPT] [--full CKPT] [--num 16]
                      [--out DIR] [--decode annealed_mean --T 0.38]
    ssl-bench prior-figure (--data DIR | --checkpoint CKPT) [--out prior.png] [--lam 0.5 --sigma 5]

The gallery is Zhang et al.'s Figure 2 layout: one row per image with the grey input, the L2,
classification and classification + rebalancing colorizations and the ground truth, written as
``index.html`` beside one PNG per cell. The prior figure shows, over the 313 in-gamut ab bins, the
empirical (smoothed) prior in log10 scale, the class-rebalancing weights built from it, and each
bin's colour at L = 50 (the paper's Figure 3a).
"""

from __future__ import annotations

import argparse
import html
import io
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ssl_bench import color
from ssl_bench.io import atomic_write_bytes

__all__ = [
    "GalleryImage",
    "PriorData",
    "load_gallery_images",
    "grey_input",
    "write_gallery",
    "gallery_main",
    "prior_and_weights",
    "prior_from_weights",
    "plot_prior_figure",
    "prior_figure_main",
]

GALLERY_PROG = "ssl-bench gallery"
PRIOR_PROG = "ssl-bench prior-figure"
PRIOR_DECADES = 5.0  # colour range of the log10 prior panel
GALLERY_SIZE = 256  # paper figures: 256 px short side, centre crop
# column key -> (command-line flag, the paper's description)
VARIANTS: dict[str, tuple[str, str]] = {
    "l2": ("--l2", "L2 regression"),
    "class": ("--class", "classification"),
    "full": ("--full", "classification + rebalancing"),
}
_CELL_RE = re.compile(r"^\d{3,}_(input|l2|class|full|truth)\.png$")


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------



def _to_hwc_uint8(img: Any) -> np.ndarray:
    """uint8 (or [0, 1] float) image as 3 x H x W or H x W x 3, tensor or array -> H x W x 3 uint8."""
    arr = img.detach().cpu().numpy() if isinstance(img, Tensor) else np.asarray(img)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"expected an image of 3 dimensions, got shape {arr.shape}")
    if arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _png_bytes(img: Any) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(_to_hwc_uint8(img), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _resolve_images(sources: Sequence[str | Path]) -> tuple[list[Path], str]:
    """Image files of folders (recursively, sorted) and of files named directly, in order given.

    Returns (paths, description of the sources for messages). Raises DataLayoutError naming the
    source when a path does not exist or nothing that looks like an image is found.
    """
    from ssl_bench.data.images import DataLayoutError, list_images
    paths: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            paths += list_images(p)
        elif p.is_file():
            paths.append(p)
        else:
            raise DataLayoutError(f"--data {p} does not exist")
    where = ", ".join(str(s) for s in sources)
    if not paths:
        from ssl_bench.data.images import IMG_EXTENSIONS
        raise DataLayoutError(f"--data {where} holds no images (looked for {', '.join(IMG_EXTENSIONS)})")
    return paths, where


# ---------------------------------------------------------------------------------------------
# colorizing (the colorize module when present, otherwise a private equivalent)
# ---------------------------------------------------------------------------------------------


def _colorizer(checkpoint: str | Path) -> Any:
    """A ColorizationPretext in eval mode rebuilt from a suite checkpoint (on the GPU when there is one)."""
    from ssl_bench.colorization.colorize import load_colorizer
    return load_colorizer(checkpoint, device="cuda" if torch.cuda.is_available() else None)


def _colorize(model: Any, img: Tensor, decode: str, T: float) -> tuple[Any, Any]:
    """(predicted sRGB uint8, Lab) of one uint8 3 x H x W image."""
    from ssl_bench.colorization.colorize import colorize_image
    return colorize_image(model, img, decode=decode, T=T)


def _method_name(model: Any, fallback: str) -> str:
    meta = getattr(model, "source_meta", None) or getattr(model, "checkpoint_meta", None) or {}
    if meta.get("pretext"):
        return f"{meta['pretext']}/{meta['variant']}" if meta.get("variant") else str(meta["pretext"])
    return fallback


# ---------------------------------------------------------------------------------------------
# gallery
# ---------------------------------------------------------------------------------------------


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
        raise ValueError(f"--num must be >= 1, got {num}")
    paths, where = _resolve_images(sources)
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
        raise DataLayoutError(f"--data {where}: no readable image (unreadable: {names})")
    return images, skipped


def grey_input(img: Tensor) -> Tensor:
    """The network's view of an image as a picture: its L with a = b = 0, as uint8 3 x H x W grey."""
    L = color.l_from_uint8(img[None])
    rgb = color.lab_to_rgb(torch.cat([L, torch.zeros_like(L), torch.zeros_like(L)], 1))[0]
    grey = rgb.mean(0, keepdim=True).mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return grey.expand(3, -1, -1).contiguous()


_CSS = """body{font-family:sans-serif;margin:1.5em;background:#fff;color:#222}
table{border-collapse:collapse}td,th{padding:3px;text-align:center;vertical-align:top}
th{font-weight:600;font-size:0.9em}th small{font-weight:normal;color:#666}
img{display:block;width:256px;height:auto}
.skipped{color:#a00;font-size:0.85em}"""


def _render_html(columns: list[tuple[str, str, str]], rows: list[tuple[str, list[str]]],
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


def write_gallery(images: Sequence[GalleryImage], models: dict[str, Any], out: str | Path,
                  decode: str = "annealed_mean", T: float = 0.38,
                  skipped: Sequence[tuple[str, str]] = ()) -> Path:
    """Colorize ``images`` with each model (keys among "l2", "class", "full", in that order) and
    write OUT/index.html with one PNG per cell; returns the html path.

    Cells are written first (each atomically), the page last, so a reader never sees a page whose
    pictures are missing; cells of an earlier, longer gallery in OUT are removed afterwards.
    """
    if not models:
        raise ValueError("the gallery needs at least one of --l2, --class, --full")
    unknown = set(models) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown gallery columns {sorted(unknown)}; expected {list(VARIANTS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = [k for k in VARIANTS if k in models]
    columns = [("input", "input", "grey (L only)")]
    columns += [(k, _method_name(models[k], f"colorization/{k}"), VARIANTS[k][1]) for k in keys]
    columns.append(("truth", "ground truth", "original"))
    width = max(3, len(str(len(images) - 1)))
    rows: list[tuple[str, list[str]]] = []
    written: set[str] = set()
    for i, item in enumerate(images):
        pictures = {"input": grey_input(item.image), "truth": item.image}
        for k in keys:
            pictures[k] = _colorize(models[k], item.image, decode, T)[0]
        files = []
        for key, _, _ in columns:
            fname = f"{i:0{width}d}_{key}.png"
            atomic_write_bytes(out / fname, _png_bytes(pictures[key]))
            files.append(fname)
            written.add(fname)
        rows.append((item.name, files))
    note = (f"{len(images)} image(s), {GALLERY_SIZE} px centre crops; decoding: {decode}"
            + (f", T = {T:g}" if decode == "annealed_mean" else "") + ".")
    page = out / "index.html"
    atomic_write_bytes(page, _render_html(columns, rows, list(skipped), note).encode("utf-8"))
    for stale in out.iterdir():
        if _CELL_RE.match(stale.name) and stale.name not in written and stale.is_file():
            stale.unlink()
    return page


def gallery_main(argv: Sequence[str]) -> int:
    """``ssl-bench gallery``; returns the exit status (0 written, 2 usage or input error)."""
    parser = argparse.ArgumentParser(prog=GALLERY_PROG, description=(
        "Side-by-side colorizations in the paper's layout: grey input, L2, class, "
        "class + rebalancing (full), ground truth; writes OUT/index.html and one PNG per cell."))
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR_OR_IMAGE",
                        help="a folder of images (searched recursively, sorted) or image files")
    parser.add_argument("--l2", metavar="CKPT", help="colorization checkpoint, L2 regression")
    parser.add_argument("--class", dest="class_", metavar="CKPT", help="colorization checkpoint, classification")
    parser.add_argument("--full", metavar="CKPT", help="colorization checkpoint, classification + rebalancing")
    parser.add_argument("--num", type=int, default=16, help="number of images (default 16)")
    parser.add_argument("--out", type=Path, default=Path("gallery"), help="output folder (default ./gallery)")
    parser.add_argument("--decode", choices=("annealed_mean", "mean", "mode"), default="annealed_mean",
                        help="how class predictions become ab (default annealed_mean)")
    parser.add_argument("--T", type=float, default=0.38, help="annealed-mean temperature (default 0.38)")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    ckpts = {k: v for k, v in (("l2", args.l2), ("class", args.class_), ("full", args.full)) if v}
    if not ckpts:
        parser.print_usage(sys.stderr)
        print(f"{GALLERY_PROG}: error: give at least one checkpoint: --l2, --class or --full", file=sys.stderr)
        return 2
    if args.T <= 0:
        print(f"{GALLERY_PROG}: error: --T must be > 0, got {args.T}", file=sys.stderr)
        return 2

    from ssl_bench.data.images import DataLayoutError
    from ssl_bench.models.checkpoint import CheckpointMismatchError
    try:
        images, skipped = load_gallery_images(args.data, args.num)
        models = {}
        for key, path in ckpts.items():
            models[key] = _colorizer(path)
            name = _method_name(models[key], f"colorization/{key}")
            if name != f"colorization/{key}":
                print(f"{GALLERY_PROG}: warning: {VARIANTS[key][0]} {path} is a {name} "
                      "checkpoint; its column is captioned with that name", file=sys.stderr)
    except (DataLayoutError, CheckpointMismatchError, FileNotFoundError, ValueError) as e:
        print(f"{GALLERY_PROG}: error: {e}", file=sys.stderr)
        return 2
    for path, why in skipped:
        print(f"{GALLERY_PROG}: warning: skipping unreadable image {path} ({why})", file=sys.stderr)
    page = write_gallery(images, models, args.out, args.decode, args.T, skipped)
    print(f"{GALLERY_PROG}: wrote {page} ({len(images)} image(s), columns: input, "
          f"{', '.join(ckpts)}, ground truth)")
    return 0


# ---------------------------------------------------------------------------------------------
# prior / rebalancing-weights figure
# ---------------------------------------------------------------------------------------------


@dataclass
class PriorData:
    """What the prior figure plots (all float64, 313 bins in the order of color.ab_gamut())."""

    prior: Tensor  # smoothed empirical prior (sigma = 0: the raw distribution); sums to 1
    weights: Tensor  # rebalance_weights(prior, lam): sum(prior * weights) = 1
    counts: Tensor | None  # raw nearest-bin counts (None when recovered from a checkpoint)
    lam: float
    sigma: float | None  # None when recovered from a checkpoint's weights
    num_images: int
    source: str


def prior_and_weights(images: Iterable[Tensor], lam: float = 0.5, sigma: float = 5.0,
                      ab_stride: int = 1) -> PriorData:
    """The empirical ab prior of ``images`` (uint8 3 x H x W or N x 3 x H x W each, any sizes),
    smoothed with sigma (0 = raw), and the class-rebalancing weights built from it.

    A pure function: nothing is cached or written.
    """
    if sigma < 0:
        raise ValueError(f"--sigma must be >= 0, got {sigma}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"--lam must be in [0, 1], got {lam}")
    counts = torch.zeros(color.NUM_BINS, dtype=torch.float64)
    n = 0
    for img in images:
        batch = img[None] if img.dim() == 3 else img
        counts += color.bin_histogram(color.lab_from_uint8(batch, ab_stride)[1]).cpu()
        n += batch.shape[0]
    if not counts.sum() > 0:
        raise ValueError("prior_and_weights: no pixels in the images")
    prior = counts / counts.sum() if sigma == 0 else color.smooth_prior(counts, sigma).to(torch.float64)
    weights = color.rebalance_weights(prior, lam)
    return PriorData(prior, weights, counts, lam, sigma, n, f"{n} image(s)")


def prior_from_weights(weights: Tensor, lam: float) -> Tensor:
    """Invert rebalance_weights: the prior p with rebalance_weights(p, lam) proportional to weights.

    w_q = 1 / (Z ((1 - lam) p_q + lam / Q)); sum_q p_q = 1 fixes Z = sum_q 1 / w_q.
    """
    if not 0.0 <= lam < 1.0:
        raise ValueError(f"--lam must be in [0, 1) to recover the prior from weights, got {lam}")
    w = weights.to(torch.float64)
    if w.shape != (color.NUM_BINS,) or not bool((w > 0).all()) or not bool(torch.isfinite(w).all()):
        raise ValueError(f"expected {color.NUM_BINS} positive finite bin weights")
    inv = 1.0 / w
    p = (inv / inv.sum() - lam / color.NUM_BINS) / (1.0 - lam)
    p = p.clamp_min(0.0)
    return p / p.sum()


def _prior_from_checkpoint(path: str | Path, lam: float) -> PriorData:
    from ssl_bench.models.checkpoint import CheckpointMismatchError, read_checkpoint
    ckpt = read_checkpoint(path)
    w = ckpt.get("state_dict", {}).get("bin_weights")
    if w is None:
        raise CheckpointMismatchError(f"checkpoint {path} has no 'bin_weights' buffer "
                                      "(not a colorization checkpoint)")
    w = w.to(torch.float64)
    if torch.allclose(w, torch.ones_like(w)):
        variant = (ckpt.get("ssl_bench") or {}).get("variant", "?")
        raise CheckpointMismatchError(f"checkpoint {path} (colorization/{variant}) was trained without "
                                      "rebalancing: its bin weights are all 1; use --data DIR instead")
    prior = prior_from_weights(w, lam)
    weights = color.rebalance_weights(prior, lam)  # = w up to its normalisation
    return PriorData(prior, weights, None, lam, None, 0, f"bin weights of {Path(path).name}")


def _bin_grid(values: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """313 values -> a (b, a) grid of 10 x 10 cells (NaN outside the gamut) and its imshow extent."""
    cen = color.ab_gamut(dtype=torch.float64).numpy()
    ia = np.rint(cen[:, 0] / color.GRID).astype(int)
    ib = np.rint(cen[:, 1] / color.GRID).astype(int)
    a0, b0 = ia.min(), ib.min()
    shape = (ib.max() - b0 + 1, ia.max() - a0 + 1) + values.shape[1:]
    grid = np.full(shape, np.nan)
    grid[ib - b0, ia - a0] = values
    g = color.GRID
    extent = (a0 * g - g / 2, ia.max() * g + g / 2, b0 * g - g / 2, ib.max() * g + g / 2)
    return grid, extent


def bin_colours(L: float = 50.0) -> np.ndarray:
    """sRGB in [0, 1] of each bin centre at lightness L: 313 x 3 (clipped to the sRGB gamut)."""
    cen = color.ab_gamut(dtype=torch.float64)
    lab = torch.cat([torch.full((color.NUM_BINS, 1), L, dtype=torch.float64), cen], 1)
    return color.lab_to_rgb(lab.T[None, :, :, None])[0, :, :, 0].T.numpy()


def plot_prior_figure(data: PriorData) -> bytes:
    """PNG: (a) log10 prior, (b) rebalancing weights, (c) bin colours at L = 50, over the ab plane."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14.5, 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 0.82]})
    p = data.prior.numpy()
    logp = np.where(p > 0, np.log10(np.where(p > 0, p, 1.0)), np.nan)
    if data.sigma is None:
        how = f"recovered from the {data.source}"
    else:
        how = (f"smoothed, sigma = {data.sigma:g}" if data.sigma else "raw") + f"; {data.num_images} image(s)"
    panels = [
        (logp, "viridis", f"(a) empirical ab prior, log10 scale\n({how})", "log10 p(a, b)"),
        (data.weights.numpy(), "magma", f"(b) class-rebalancing weights\n(lambda = {data.lam:g}, "
         "sum p w = 1)", "weight w"),
    ]
    # the smoothing's Gaussian tails reach 1e-70: show the top decades, lower ones at the floor
    top = float(np.nanmax(logp))
    floor = max(float(np.nanmin(logp)), top - PRIOR_DECADES)
    limits = [(floor, top), (None, None)]
    for ax, (vals, cmap, title, label), (vmin, vmax) in zip(axes, panels, limits):
        grid, extent = _bin_grid(vals)
        im = ax.imshow(grid, origin="lower", extent=extent, cmap=cmap, interpolation="nearest",
                       vmin=vmin, vmax=vmax)
        clipped = vmin is not None and float(np.nanmin(vals)) < vmin
        fig.colorbar(im, ax=ax, label=label, shrink=0.9, extend="min" if clipped else "neither")
        ax.set_title(title, fontsize=10)
    rgb, extent = _bin_grid(bin_colours(50.0))
    rgba = np.concatenate([np.nan_to_num(rgb, nan=1.0), np.isfinite(rgb[..., :1]).astype(float)], -1)
    axes[2].imshow(rgba, origin="lower", extent=extent, interpolation="nearest")
    axes[2].set_title(f"(c) the {color.NUM_BINS} bins' colours at L = 50", fontsize=10)
    for ax in axes:
        ax.set_xlabel("a")
        ax.set_ylabel("b")
        ax.set_xlim(-115, 115)
        ax.set_ylim(-115, 115)
        ax.set_aspect("equal")
        ax.grid(True, color="0.85", lw=0.4)
        ax.set_axisbelow(True)
    buf = io.BytesIO()
    fig.canvas.print_png(buf)
    return buf.getvalue()


def _iter_images(paths: Sequence[Path], skipped: list[tuple[str, str]]) -> Iterable[Tensor]:
    from ssl_bench.data.images import DECODE_ERRORS, decode_rgb
    for path in paths:
        try:
            yield decode_rgb(path)
        except DECODE_ERRORS as e:
            skipped.append((str(path), f"{type(e).__name__}: {e}"))


def prior_figure_main(argv: Sequence[str]) -> int:
    """``ssl-bench prior-figure``; returns the exit status (0 written, 2 usage or input error)."""
    parser = argparse.ArgumentParser(prog=PRIOR_PROG, description=(
        "Plot the empirical ab prior (log10), the class-rebalancing weights built from it, and the "
        "313 bins' colours at L = 50, from a folder of images or a colorization checkpoint."))
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="DIR", help="images to measure the prior on (searched recursively)")
    src.add_argument("--checkpoint", metavar="CKPT",
                     help="colorization/full checkpoint: the prior is recovered from its bin_weights")
    parser.add_argument("--out", type=Path, default=Path("prior.png"), help="output PNG (default prior.png)")
    parser.add_argument("--lam", type=float, default=0.5, help="prior/uniform mixing lambda (default 0.5)")
    parser.add_argument("--sigma", type=float, default=5.0, help="prior smoothing in ab units (default 5; 0 = raw)")
    parser.add_argument("--max-images", type=int, default=None, help="use at most this many images")
    parser.add_argument("--ab-stride", type=int, default=1, help="count every n-th pixel per axis (default 1)")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)

    from ssl_bench.data.images import DataLayoutError
    from ssl_bench.models.checkpoint import CheckpointMismatchError
    skipped: list[tuple[str, str]] = []
    try:
        if args.max_images is not None and args.max_images < 1:
            raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
        if args.checkpoint:
            data = _prior_from_checkpoint(args.checkpoint, args.lam)
        else:
            paths, where = _resolve_images([args.data])
            if args.max_images is not None:
                paths = paths[: args.max_images]
            try:
                data = prior_and_weights(_iter_images(paths, skipped), args.lam, args.sigma, args.ab_stride)
            except ValueError as e:
                if "no pixels" in str(e):
                    names = ", ".join(p for p, _ in skipped[:5])
                    raise DataLayoutError(f"--data {where}: no readable image (unreadable: {names})") from e
                raise
            data.source = where
    except (DataLayoutError, CheckpointMismatchError, FileNotFoundError, ValueError) as e:
        print(f"{PRIOR_PROG}: error: {e}", file=sys.stderr)
        return 2
    for path, why in skipped:
        print(f"{PRIOR_PROG}: warning: skipping unreadable image {path} ({why})", file=sys.stderr)
    atomic_write_bytes(args.out, plot_prior_figure(data))
    print(f"{PRIOR_PROG}: wrote {args.out} ({data.source}; lambda = {data.lam:g}"
          + (f", sigma = {data.sigma:g}" if data.sigma is not None else "") + ")")
    return 0
