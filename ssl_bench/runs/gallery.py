"""``ssl-bench gallery``: the paper's side-by-side comparison of colorizations (HTML + one PNG per cell).

    ssl-bench gallery --data DIR_OR_IMAGES [--l2 CKPT] [--class CKPT] [--full CKPT] [--num 16]
                      [--out DIR] [--decode annealed_mean --T 0.38]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ssl_bench.colorization.colorize import DECODE_METHODS, load_colorizer, method_name
from ssl_bench.colorization.gallery import VARIANTS, load_gallery_images, write_gallery
from ssl_bench.pretext.colorization import ColorizationPretext
from ssl_bench.runs.common import device_for

__all__ = ["main"]

PROG = "ssl-bench gallery"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=(
        "Side-by-side colorizations in the paper's layout: grey input, L2, class, "
        "class + rebalancing (full), ground truth; writes OUT/index.html and one PNG per cell."))
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR_OR_IMAGE",
                        help="a folder of images (searched recursively, sorted) or image files")
    parser.add_argument("--l2", metavar="CKPT", help="colorization checkpoint, L2 regression")
    parser.add_argument("--class", dest="class_", metavar="CKPT", help="colorization checkpoint, classification")
    parser.add_argument("--full", metavar="CKPT", help="colorization checkpoint, classification + rebalancing")
    parser.add_argument("--num", type=int, default=16, help="number of images (default 16)")
    parser.add_argument("--out", type=Path, default=Path("gallery"), help="output folder (default ./gallery)")
    parser.add_argument("--decode", choices=DECODE_METHODS, default="annealed_mean",
                        help="how class predictions become ab (default annealed_mean)")
    parser.add_argument("--T", type=float, default=0.38, help="annealed-mean temperature (default 0.38)")
    return parser


def _load_models(ckpts: dict[str, str]) -> dict[str, ColorizationPretext]:
    """The colorizers by column (on the GPU when there is one); a checkpoint of another variant than
    its flag says keeps its own name as caption, with a warning."""
    device = device_for("auto")
    models = {}
    for key, path in ckpts.items():
        models[key] = load_colorizer(path, device)
        name = method_name(models[key])
        if name != f"colorization/{key}":
            print(f"{PROG}: warning: --{key} {path} is a {name} checkpoint; its column is captioned "
                  "with that name", file=sys.stderr)
    return models


def main(argv: Sequence[str]) -> int:
    """``ssl-bench gallery``; returns the exit status (0 written, 2 usage or input error)."""
    parser = _parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    ckpts = {k: v for k, v in zip(VARIANTS, (args.l2, args.class_, args.full)) if v}
    if not ckpts:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: give at least one checkpoint: --l2, --class or --full", file=sys.stderr)
        return 2
    if args.T <= 0:
        print(f"{PROG}: error: --T must be > 0, got {args.T}", file=sys.stderr)
        return 2
    from ssl_bench.errors import SuiteError
    try:
        images, skipped = load_gallery_images(args.data, args.num)
        models = _load_models(ckpts)
    except SuiteError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    for path, why in skipped:
        print(f"{PROG}: warning: skipping unreadable image {path} ({why})", file=sys.stderr)
    page = write_gallery(images, models, args.out, args.decode, args.T, skipped)
    print(f"{PROG}: wrote {page} ({len(images)} image(s), columns: input, {', '.join(ckpts)}, ground truth)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
