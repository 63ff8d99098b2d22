"""``ssl-bench prior-figure``: plot the ab prior, the rebalancing weights and the bins' colours.

    ssl-bench prior-figure (--data DIR | --checkpoint CKPT) [--out prior.png] [--lam 0.5 --sigma 5]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ssl_bench.colorization.gallery import resolve_images
from ssl_bench.colorization.prior_figure import PriorData, plot_prior_figure, prior_from_checkpoint, prior_from_images
from ssl_bench.errors import ConfigError, SuiteError
from ssl_bench.io import atomic_write_bytes

__all__ = ["main"]

PROG = "ssl-bench prior-figure"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=(
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
    return parser


def _prior(args: argparse.Namespace) -> tuple[PriorData, list[tuple[str, str]]]:
    """The figure's data from --checkpoint or --data, and the unreadable images met."""
    if args.max_images is not None and args.max_images < 1:
        raise ConfigError(f"--max-images must be >= 1, got {args.max_images}")
    if args.checkpoint:
        return prior_from_checkpoint(args.checkpoint, args.lam), []
    paths, where = resolve_images([args.data])
    return prior_from_images(paths[: args.max_images], where, args.lam, args.sigma, args.ab_stride)


def main(argv: Sequence[str]) -> int:
    """``ssl-bench prior-figure``; returns the exit status (0 written, 2 usage or input error)."""
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        data, skipped = _prior(args)
    except SuiteError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    for path, why in skipped:
        print(f"{PROG}: warning: skipping unreadable image {path} ({why})", file=sys.stderr)
    atomic_write_bytes(args.out, plot_prior_figure(data))
    print(f"{PROG}: wrote {args.out} ({data.source}; lambda = {data.lam:g}"
          + (f", sigma = {data.sigma:g}" if data.sigma is not None else "") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
