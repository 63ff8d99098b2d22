"""Colorize images with a trained colorization checkpoint (the paper's use of the network).

    ssl-bench colorize IMAGE_OR_DIR... --checkpoint CKPT [--decode annealed_mean|mean|mode] [--T 0.38]
                       [--out DIR] [--size 256] [--device auto]
    (``checkpoint=CKPT decode=... T=... out=... size=... device=...`` are accepted as well)

For every image (folders are searched recursively) two PNGs are written: ``<stem>_colorized.png``
and ``<stem>_compare.png`` (grey input | colorization | original, side by side), into ``--out``
(mirroring the sub-folders of a folder argument) or beside the input. The lightness of the output
is the input's own L at full resolution; only ab comes from the network, which sees the image
resized so that its short side is ``--size`` (256 by default; 0 = the image's own size). Its ab
prediction (at the network's ab grid) is decoded -- annealed mean with T = 0.38 by default, the
paper's choice -- and upsampled bilinearly to the full image.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from ssl_bench import color
from ssl_bench.data.images import DECODE_ERRORS, decode_rgb, list_images
from ssl_bench.pretext.losses import resize_to
from ssl_bench.models.alexnet import AlexNet
from ssl_bench.models.checkpoint import CheckpointMismatchError, check_state_dict, read_checkpoint
from ssl_bench.pretext.colorization import ColorizationPretext, ColorObjective
from ssl_bench.io import atomic_writer

__all__ = ["DECODE_METHODS", "DEFAULT_SHORT_SIDE", "load_colorizer", "predict_ab", "net_input_size",
           "colorize_image", "to_uint8", "grey_rgb", "colorize_main"]

DECODE_METHODS = ("annealed_mean", "mean", "mode")
DEFAULT_SHORT_SIDE = 256
OUTPUT_SUFFIXES = ("_colorized", "_compare")
PROG = "ssl-bench colorize"


# ---------------------------------------------------------------------------------------------
# Model


def _describe(meta: dict[str, Any]) -> str:
    pretext, variant = meta.get("pretext"), meta.get("variant")
    return f"{pretext}/{variant}" if variant else str(pretext)


def load_colorizer(checkpoint: str | Path, device: str | torch.device | None = None) -> ColorizationPretext:
    """Rebuild a colorization network from a suite checkpoint, in eval mode.

    The trunk comes from the checkpoint's ``ssl_bench`` entry (``trunk`` config), the head's kind
    from ``variant`` (l2 -> regression, class/full -> 313-way classification). Rebalancing only
    matters for training, so a "full" model gets a uniform prior (its stored class weights are
    loaded with the state dict anyway). ``model.source_meta`` holds the checkpoint's entry.

    Raises FileNotFoundError (no such file) or CheckpointMismatchError (not a suite checkpoint,
    not a colorization model, or weights that do not fit the recorded architecture).
    """
    path = Path(checkpoint)
    ckpt = read_checkpoint(path)
    meta = ckpt.get("ssl_bench")
    if not isinstance(meta, dict) or "trunk" not in meta:
        raise CheckpointMismatchError(
            f"checkpoint {path} is not a colorization model: it was not written by ssl_bench (no "
            "'ssl_bench' entry with the trunk's configuration)")
    if meta.get("pretext") != "colorization":
        raise CheckpointMismatchError(
            f"checkpoint {path} is not a colorization model: it holds a {_describe(meta)!r} model "
            "(pretext=colorization is needed to predict colours)")
    variant = meta.get("variant")
    if variant not in ("l2", "class", "full"):
        raise CheckpointMismatchError(f"checkpoint {path}: unknown colorization variant {variant!r} "
                                      "(expected l2, class or full)")
    objective = ColorObjective(kind="regression" if variant == "l2" else "classification",
                               rebalance=variant == "full")
    if meta.get("num_outputs") not in (None, objective.num_outputs):
        raise CheckpointMismatchError(f"checkpoint {path}: variant {variant!r} predicts "
                                      f"{objective.num_outputs} outputs, the checkpoint records "
                                      f"num_outputs={meta['num_outputs']}")
    uniform = torch.full((color.NUM_BINS,), 1.0 / color.NUM_BINS) if objective.rebalance else None
    model = ColorizationPretext(AlexNet(**meta["trunk"]), objective, optimizer=None, prior=uniform,
                                ab_stride=int(meta.get("ab_stride", 8)))
    state = ckpt.get("state_dict") or {}
    check_state_dict(model, state, str(path))
    model.load_state_dict(state)
    model.source_meta = dict(meta)
    model.source_path = str(path)
    if device is not None:
        model.to(device)
    return model.eval()


def _decode(model: ColorizationPretext, out: Tensor, method: str, T: float) -> Tensor:
    if model.objective.kind == "regression":  # the L2 net predicts ab directly: nothing to decode
        return out
    return color.decode(out, method, T)


@torch.no_grad()
def predict_ab(model: ColorizationPretext, L: Tensor, decode: str = "annealed_mean",
               T: float = 0.38) -> Tensor:
    """Decoded ab at the network's ab grid.

    L: float N x 1 x h x w lightness (0..100) on the model's device.
    Returns float32 N x 2 x ceil(h/s) x ceil(w/s), s = the model's ab_stride (the grid its targets
    were built on during training; the fc8 map is resized to it exactly as in ``forward``).
    """
    if decode not in DECODE_METHODS:
        raise ValueError(f"decode: expected one of {', '.join(DECODE_METHODS)}, got {decode!r}")
    if not T > 0:
        raise ValueError(f"T must be > 0, got {T}")
    s = model.ab_stride
    x = L - 50.0
    if model.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = model.head(model.trunk(x))
    h, w = L.shape[-2:]
    out = resize_to(out, (-(-h // s), -(-w // s))).float()
    return _decode(model, out, decode, T).contiguous()


def net_input_size(height: int, width: int, net_size: int | Sequence[int] | None = None) -> tuple[int, int]:
    """Size the network sees: None -> short side 256; int n > 0 -> short side n; 0 -> (height,
    width) unchanged; (h, w) -> exactly that."""
    if net_size is None:
        net_size = DEFAULT_SHORT_SIDE
    if isinstance(net_size, (tuple, list)):
        h, w = (int(v) for v in net_size)
        if h < 1 or w < 1:
            raise ValueError(f"net_size: expected a positive (h, w), got {tuple(net_size)}")
        return h, w
    n = int(net_size)
    if n < 0:
        raise ValueError(f"net_size: expected a short side >= 0, got {n}")
    if n == 0:
        return height, width
    short = min(height, width)
    return max(1, round(height * n / short)), max(1, round(width * n / short))


def to_uint8(rgb: Tensor) -> Tensor:
    """sRGB in [0, 1] (any shape) -> uint8 0..255, rounded."""
    return rgb.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def grey_rgb(L: Tensor) -> Tensor:
    """The grey image of a lightness map: float N x 1 x H x W -> uint8 N x 3 x H x W (a = b = 0)."""
    return to_uint8(color.lab_to_rgb(torch.cat([L, torch.zeros_like(L).expand(-1, 2, -1, -1)], 1)))


@torch.no_grad()
def colorize_image(model: ColorizationPretext, image: Tensor, decode: str = "annealed_mean",
                   T: float = 0.38, net_size: int | Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    """Colorize one image, keeping its own lightness at full resolution.

    image: uint8 3 x H x W sRGB (a grey image, R = G = B, is the intended input; a colour image is
        used only through its L).
    Returns (uint8 3 x H x W sRGB colorization, float32 3 x H x W Lab before rounding to 8 bits,
    whose L is exactly the input's L), both on the CPU.
    """
    if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        raise ValueError(f"image must be uint8 3 x H x W, got {image.dtype} {tuple(image.shape)}")
    device = next(model.parameters()).device
    img = image.to(device)[None]
    H, W = img.shape[-2:]
    L_full = color.l_from_uint8(img)
    size = net_input_size(H, W, net_size)
    # resize the 8-bit image as the training pipeline does (antialiased), then take its L
    L_net = L_full if size == (H, W) else color.l_from_uint8(TF.resize(img, list(size), antialias=True))
    ab = predict_ab(model, L_net, decode, T)
    ab_full = F.interpolate(ab, size=(H, W), mode="bilinear", align_corners=False)
    lab = torch.cat([L_full, ab_full], 1)
    return to_uint8(color.lab_to_rgb(lab))[0].cpu(), lab[0].cpu()


# ---------------------------------------------------------------------------------------------
# Command line


def _save_png(image: Tensor, path: Path) -> None:
    """uint8 3 x H x W -> PNG, atomically (temporary file in the same folder, then os.replace)."""
    with atomic_writer(path) as fh:
        Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy())).save(fh, format="PNG")


def compare_strip(grey: Tensor, colorized: Tensor, original: Tensor, gap: int = 4) -> Tensor:
    """grey | colorization | original side by side with white gaps: uint8 3 x H x (3W + 2 gap)."""
    sep = torch.full((3, grey.shape[1], gap), 255, dtype=torch.uint8)
    return torch.cat([grey, sep, colorized, sep, original], 2)


_KEYS = ("checkpoint", "decode", "T", "out", "size", "device")


def _flags(argv: Sequence[str]) -> list[str]:
    """``key=value`` (the Hydra-like spelling) -> ``--key value``."""
    out: list[str] = []
    for tok in argv:
        m = re.fullmatch(rf"({'|'.join(_KEYS)})=(.*)", tok, flags=re.S)
        out += [f"--{m.group(1)}", m.group(2)] if m else [tok]
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Colorize images with a colorization checkpoint.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="images, or folders searched recursively")
    p.add_argument("--checkpoint", required=True, help="a suite checkpoint of pretext=colorization")
    p.add_argument("--decode", choices=DECODE_METHODS, default="annealed_mean",
                   help="how the predicted distribution becomes ab (default: annealed_mean)")
    p.add_argument("--T", type=float, default=0.38, help="annealed-mean temperature (default 0.38)")
    p.add_argument("--out", default=None, help="output folder (default: beside each input)")
    p.add_argument("--size", type=int, default=DEFAULT_SHORT_SIDE,
                   help="short side of the network's input (default 256; 0 = the image's own size)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    return p


def _gather(inputs: Sequence[str], out: Path | None) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(image, output folder) pairs and the inputs that do not exist."""
    jobs: list[tuple[Path, Path]] = []
    missing: list[str] = []
    for arg in inputs:
        p = Path(arg).expanduser()
        if p.is_dir():
            for q in list_images(p):
                if q.stem.endswith(OUTPUT_SUFFIXES):  # our own outputs from an earlier run
                    continue
                jobs.append((q, q.parent if out is None else out / q.parent.relative_to(p)))
        elif p.is_file():
            jobs.append((p, p.parent if out is None else out))
        else:
            missing.append(arg)
    return jobs, missing


def colorize_main(argv: Sequence[str]) -> int:
    """``ssl-bench colorize``; returns the exit status (0: at least one image colorized, 1: none,
    2: usage error, missing checkpoint or not a colorization model)."""
    try:
        args = _parser().parse_args(_flags(argv))
    except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
        return int(e.code or 0)
    if not args.T > 0:
        print(f"{PROG}: error: --T must be > 0, got {args.T}", file=sys.stderr)
        return 2
    if args.size < 0:
        print(f"{PROG}: error: --size must be >= 0, got {args.size}", file=sys.stderr)
        return 2
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        model = load_colorizer(args.checkpoint, device)
    except (FileNotFoundError, CheckpointMismatchError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out).expanduser() if args.out else None
    jobs, missing = _gather(args.inputs, out)
    for m in missing:
        print(f"{PROG}: skipping {m}: no such file or directory", file=sys.stderr)
    if not jobs:
        print(f"{PROG}: error: no images found in {' '.join(args.inputs)}", file=sys.stderr)
        return 2
    if model.objective.kind == "regression" and args.decode != "annealed_mean":
        print(f"{PROG}: note: an l2 model predicts ab directly; --decode {args.decode} has no effect",
              file=sys.stderr)
    done = skipped = 0
    used: set[Path] = set()
    for path, folder in jobs:
        try:
            image = decode_rgb(path)
        except DECODE_ERRORS as e:
            print(f"{PROG}: skipping unreadable image {path}: {e}", file=sys.stderr)
            skipped += 1
            continue
        stem = path.stem
        if folder / f"{stem}_colorized.png" in used:  # a.jpg and a.png in one folder
            stem = f"{path.stem}_{path.suffix.lstrip('.')}"
        targets = folder / f"{stem}_colorized.png", folder / f"{stem}_compare.png"
        try:
            rgb, lab = colorize_image(model, image, args.decode, args.T, args.size)
            _save_png(rgb, targets[0])
            _save_png(compare_strip(grey_rgb(lab[None, :1])[0], rgb, image), targets[1])
        except OSError as e:
            print(f"{PROG}: could not write the outputs of {path}: {e}", file=sys.stderr)
            skipped += 1
            continue
        used.add(targets[0])
        done += 1
    where = str(out) if out else "beside the inputs"
    print(f"{PROG}: {done} image(s) colorized, {skipped + len(missing)} skipped; outputs {where}")
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(colorize_main(sys.argv[1:]))
