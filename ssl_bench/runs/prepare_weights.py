"""``ssl-bench prepare-weights``: suite checkpoint -> weights prepared for PASCAL VOC fine-tuning.

    ssl-bench prepare-weights CHECKPOINT --out PATH [--mode auto|gray|color|rgb] [--no-absorb]
                              [--rescale-data DIR [--rescale-images 64] [--size 227]]

Batch norm is absorbed, the weights Krähenbühl-rescaled on the images of ``--rescale-data`` (if
given), and the gray / color / rgb input mode set up (`ssl_bench.models.prepare`); the result is
written with `ssl_bench.models.checkpoint.save_prepared`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssl_bench.data.images import DataLayoutError
from ssl_bench.models.checkpoint import CheckpointMismatchError, load_suite_trunk, save_prepared
from ssl_bench.models.prepare import (
    DEFAULT_RESCALE_SIZE,
    MODES,
    prepare_for_transfer,
    prepared_mode,
    rescale_batch,
    resolve_mode,
)

PROG = "ssl-bench prepare-weights"
DEFAULT_RESCALE_IMAGES = 64


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Prepare a pretrained trunk for PASCAL VOC fine-tuning: absorb batch norm, "
                    "Krähenbühl-rescale, and set up the gray / color / rgb input mode.")
    p.add_argument("checkpoint", help="suite checkpoint (e.g. outputs/.../checkpoints/last.ckpt)")
    p.add_argument("--out", required=True, help="where to write the prepared weights")
    p.add_argument("--mode", choices=MODES, default="auto",
                   help="auto: gray for L trunks, rgb for RGB trunks; color adds the ab conv1 branch")
    p.add_argument("--no-absorb", action="store_true", help="keep batch norm (no folding)")
    p.add_argument("--rescale-data", type=Path, default=None,
                   help="image folder on which to measure the Krähenbühl rescaling (none: no rescaling)")
    p.add_argument("--rescale-images", type=int, default=None,
                   help=f"number of images used for rescaling (default {DEFAULT_RESCALE_IMAGES})")
    p.add_argument("--size", type=int, default=None,
                   help=f"rescaling crop size (default {DEFAULT_RESCALE_SIZE}, the fine-tuning crop)")
    return p


def rescale_settings(a: argparse.Namespace) -> tuple[int, int]:
    """(number of rescaling images, crop size), checked against the other arguments."""
    if a.rescale_data is None and (a.rescale_images is not None or a.size is not None):
        raise ValueError("--rescale-images / --size need --rescale-data DIR")
    count = DEFAULT_RESCALE_IMAGES if a.rescale_images is None else a.rescale_images
    size = DEFAULT_RESCALE_SIZE if a.size is None else a.size
    if count < 1 or size < 1:
        raise ValueError("--rescale-images and --size must be positive")
    if Path(a.out).resolve() == Path(a.checkpoint).resolve():
        raise ValueError(f"--out {a.out} is the input checkpoint; choose another path")
    return count, size


def prepare(a: argparse.Namespace, count: int, size: int) -> str:
    """Load, prepare and write the weights; returns the one-line summary."""
    trunk, info = load_suite_trunk(a.checkpoint)
    resolve_mode(trunk, a.mode)  # fail before reading any rescaling images
    images = None
    if a.rescale_data is not None:
        try:
            images = rescale_batch(a.rescale_data, count, size, trunk.input_space)
        except DataLayoutError as e:
            raise ValueError(f"--rescale-data={e}") from e
    prepared = prepare_for_transfer(trunk, a.mode, absorb_bn=not a.no_absorb, rescale_images=images)
    n = int(images.shape[0]) if images is not None else 0
    meta = {"source": info["source"], "method": info["method"], "absorbed_bn": not a.no_absorb,
            "rescale_data": str(a.rescale_data) if n else None, "rescale_images": n,
            "rescale_size": size if n else None}
    save_prepared(prepared, a.out, meta)
    steps = ["batch norm absorbed" if not a.no_absorb else "batch norm kept",
             f"rescaled on {n} images" if n else "not rescaled"]
    return (f"ssl-bench: {info['method']} prepared for fine-tuning (mode {prepared_mode(prepared)}, "
            f"input {prepared.input_space}, {', '.join(steps)}) -> {a.out}")


def main(argv: Sequence[str]) -> int:
    """Returns the exit code: 0 ok, 2 user error (one line on stderr)."""
    try:
        a = build_parser().parse_args(list(argv))
    except SystemExit as e:  # usage errors (2) and --help (0) as a return code, like other commands
        return int(e.code or 0)
    try:
        summary = prepare(a, *rescale_settings(a))
    except (CheckpointMismatchError, DataLayoutError, FileNotFoundError, ValueError) as e:
        return _fail(e)
    print(summary)
    return 0


def _fail(msg: Any) -> int:
    print(f"ssl-bench: error: {msg}", file=sys.stderr)
    return 2
