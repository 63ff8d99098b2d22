"""``ssl-bench colorize``: colorize images with a trained colorization checkpoint.

    ssl-bench colorize IMAGE_OR_DIR... --checkpoint CKPT [--decode annealed_mean|mean|mode] [--T 0.38]
                       [--out DIR] [--size 256] [--device auto]
    (``checkpoint=CKPT decode=... T=... out=... size=... device=...`` are accepted as well)

For every image (folders are searched recursively) two PNGs are written: ``<stem>_colorized.png``
and ``<stem>_compare.png`` (grey input | colorization | original, side by side), into ``--out``
(mirroring the sub-folders of a folder argument) or beside the input. The network sees the image
resized so that its short side is ``--size`` (0 = the image's own size); see
:mod:`ssl_bench.colorization.colorize`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ssl_bench.colorization.colorize import (
    DECODE_METHODS,
    DEFAULT_SHORT_SIDE,
    colorize_image,
    compare_strip,
    grey_rgb,
    load_colorizer,
    save_png,
)
from ssl_bench.data.images import DECODE_ERRORS, decode_rgb, list_images
from ssl_bench.errors import SuiteError
from ssl_bench.pretext.colorization import ColorizationPretext
from ssl_bench.runs.common import device_for, key_value_flags

__all__ = ["main"]

PROG = "ssl-bench colorize"
OUTPUT_SUFFIXES = ("_colorized", "_compare")


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


def _error(msg: object) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 2


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


def _targets(path: Path, folder: Path, used: set[Path]) -> tuple[Path, Path]:
    """(colorized, compare) output paths of one image, distinct from those already ``used``."""
    stem = path.stem
    if folder / f"{stem}_colorized.png" in used:  # a.jpg and a.png in one folder
        stem = f"{path.stem}_{path.suffix.lstrip('.')}"
    return folder / f"{stem}_colorized.png", folder / f"{stem}_compare.png"


def _colorize_all(model: ColorizationPretext, jobs: Sequence[tuple[Path, Path]],
                  args: argparse.Namespace) -> tuple[int, int]:
    """Colorize and write every job; (done, skipped), each skip reported on stderr."""
    done = skipped = 0
    used: set[Path] = set()
    for path, folder in jobs:
        try:
            image = decode_rgb(path)
        except DECODE_ERRORS as e:
            print(f"{PROG}: skipping unreadable image {path}: {e}", file=sys.stderr)
            skipped += 1
            continue
        targets = _targets(path, folder, used)
        try:
            rgb, lab = colorize_image(model, image, args.decode, args.T, args.size)
            save_png(rgb, targets[0])
            save_png(compare_strip(grey_rgb(lab[None, :1])[0], rgb, image), targets[1])
        except OSError as e:
            print(f"{PROG}: could not write the outputs of {path}: {e}", file=sys.stderr)
            skipped += 1
            continue
        used.add(targets[0])
        done += 1
    return done, skipped


def main(argv: Sequence[str]) -> int:
    """``ssl-bench colorize``; returns the exit status (0: at least one image colorized, 1: none,
    2: usage error, missing checkpoint or not a colorization model)."""
    parser = _parser()
    try:
        args = parser.parse_args(key_value_flags(parser, argv))
    except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
        return int(e.code or 0)
    if not args.T > 0:
        return _error(f"--T must be > 0, got {args.T}")
    if args.size < 0:
        return _error(f"--size must be >= 0, got {args.size}")
    try:
        model = load_colorizer(args.checkpoint, device_for("auto") if args.device == "auto" else args.device)
    except SuiteError as e:
        return _error(e)
    out = Path(args.out).expanduser() if args.out else None
    jobs, missing = _gather(args.inputs, out)
    for m in missing:
        print(f"{PROG}: skipping {m}: no such file or directory", file=sys.stderr)
    if not jobs:
        return _error(f"no images found in {' '.join(args.inputs)}")
    if model.objective.kind == "regression" and args.decode != "annealed_mean":
        print(f"{PROG}: note: an l2 model predicts ab directly; --decode {args.decode} has no effect",
              file=sys.stderr)
    done, skipped = _colorize_all(model, jobs, args)
    where = str(out) if out else "beside the inputs"
    print(f"{PROG}: {done} image(s) colorized, {skipped + len(missing)} skipped; outputs {where}")
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
