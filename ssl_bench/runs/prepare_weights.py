"""``ssl-bench prepare-weights``: suite checkpoint -> weights prepared for PASCAL VOC fine-tuning.

    ssl-bench prepare-weights CHECKPOINT --out PATH [--mode auto|gray|color|rgb] [--no-absorb]
                              [--rescale calibrate|per_unit|none] [--rescale-data DIR
                              [--rescale-images N] [--size 227]] [--geometry train|deploy]
                              [--calibration-draws 256] [--seed 0]

Batch norm is absorbed, the weights rescaled on the images of ``--rescale-data`` (``calibrate``:
Krähenbühl's gradient-ratio calibration, the authors' dagger preparation; ``per_unit``: zero mean and
unit variance per unit; without ``--rescale``, per_unit when ``--rescale-data`` is given, else none),
and the gray / color / rgb input mode set up (`ssl_bench.models.prepare`). The gradient ratios
E||dL/dW||^2 / ||W||^2 of every layer are measured before and after the rescaling (a random 1000-way
top, `ssl_bench.models.init.top_gradient_ratios`), printed and recorded in the file's metadata. The
result is written with `ssl_bench.models.checkpoint.save_prepared`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ssl_bench.data.images import DataLayoutError
from ssl_bench.errors import ConfigError
from ssl_bench.models.checkpoint import read_suite_checkpoint, save_prepared
from ssl_bench.models.init import TOP_NAME, top_gradient_ratios
from ssl_bench.models.prepare import (
    CALIBRATION_DRAWS,
    DEFAULT_RESCALE_SIZE,
    MODES,
    RESCALE_METHODS,
    absorb_batch_norm,
    prepare_with_report,
    prepared_mode,
    rescale_batch,
    resolve_mode,
)
from ssl_bench.runs.jobs import run_argparse_command

PROG = "ssl-bench prepare-weights"
# per_unit: the suite's earlier default; calibrate: the authors' one batch of 80 training crops
DEFAULT_RESCALE_IMAGES = {"per_unit": 64, "calibrate": 80}
GEOMETRIES = ("train", "deploy")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Prepare a pretrained trunk for PASCAL VOC fine-tuning: absorb batch norm, "
                    "rescale (Krähenbühl's calibration or per-unit), and set up the gray / color / rgb input mode.")
    p.add_argument("checkpoint", help="suite checkpoint (e.g. outputs/.../checkpoints/last.ckpt)")
    p.add_argument("--out", required=True, help="where to write the prepared weights")
    p.add_argument("--mode", choices=MODES, default="auto",
                   help="auto: gray for L trunks, rgb for RGB trunks; color adds the ab conv1 branch")
    p.add_argument("--no-absorb", action="store_true", help="keep batch norm (no folding)")
    p.add_argument("--rescale", choices=RESCALE_METHODS, default=None,
                   help="calibrate: gradient-ratio calibration (the authors' dagger rows); per_unit: zero mean, "
                        "unit variance per unit; none. Default: per_unit with --rescale-data, else none")
    p.add_argument("--rescale-data", type=Path, default=None,
                   help="image folder on which the rescaling is measured (training images)")
    p.add_argument("--rescale-images", type=int, default=None,
                   help="number of images used for rescaling (default: 80 for calibrate, 64 for per_unit)")
    p.add_argument("--size", type=int, default=None,
                   help=f"rescaling crop size (default {DEFAULT_RESCALE_SIZE}, the fine-tuning crop)")
    p.add_argument("--geometry", choices=GEOMETRIES, default=None,
                   help="build the trunk in this geometry (default: as recorded; the authors calibrate in deploy)")
    p.add_argument("--calibration-draws", type=int, default=CALIBRATION_DRAWS,
                   help=f"random gradient draws per calibration round and measurement (default {CALIBRATION_DRAWS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the random top and gradients")
    return p


def rescale_settings(a: argparse.Namespace) -> tuple[str, int, int]:
    """(rescale method, number of images, crop size), checked against the other arguments."""
    method = a.rescale or ("per_unit" if a.rescale_data is not None else "none")
    if method != "none" and a.rescale_data is None:
        raise ConfigError(f"--rescale {method} needs --rescale-data DIR (training images to measure on)")
    if method == "none" and (a.rescale_data is not None or a.rescale_images is not None or a.size is not None):
        raise ConfigError("--rescale-data / --rescale-images / --size need a rescaling (--rescale calibrate|per_unit)")
    count = DEFAULT_RESCALE_IMAGES.get(method, 0) if a.rescale_images is None else a.rescale_images
    size = DEFAULT_RESCALE_SIZE if a.size is None else a.size
    if (method != "none" and count < 1) or size < 1 or a.calibration_draws < 1:
        raise ConfigError("--rescale-images, --size and --calibration-draws must be positive")
    if Path(a.out).resolve() == Path(a.checkpoint).resolve():
        raise ConfigError(f"--out {a.out} is the input checkpoint; choose another path")
    return method, count, size


def check_crop(trunk: nn.Module, images: Tensor, size: int) -> None:
    """A crop too small for the trunk's geometry is a user error, not a traceback."""
    try:
        with torch.no_grad():
            trunk.eval()(images[:1])
    except RuntimeError as e:
        geometry = getattr(trunk, "geometry", "?")
        raise ConfigError(f"--size {size}: the trunk ({geometry} geometry) cannot run on {size} x {size} crops "
                          f"({str(e).splitlines()[0]}); use a larger --size (the authors: 227)") from e


def measured_ratios(trunk: nn.Module, images: Tensor, a: argparse.Namespace) -> dict[str, float]:
    """Gradient ratios of the trunk's layers (a ColorInputTrunk's L trunk), the random top left out.
    The seed differs from the calibration's, so the measurement uses its own top and gradients."""
    base = getattr(trunk, "trunk", trunk)
    ratios = top_gradient_ratios(base, images, draws=a.calibration_draws, seed=a.seed + 1)
    return {name: value for name, value in ratios.items() if name != TOP_NAME}


def spread(ratios: dict[str, float]) -> float:
    """max / min of the ratios (1 = all layers learn at the same rate)."""
    return max(ratios.values()) / min(ratios.values())


def ratio_lines(before: dict[str, float], after: dict[str, float]) -> list[str]:
    """One line per layer, then the spreads."""
    lines = [f"  {name:<8} E|dW|^2/|W|^2  before {before[name]:.4g}  after {after[name]:.4g}" for name in before]
    lines.append(f"  spread (max/min)  before {spread(before):.3g}  after {spread(after):.3g}")
    return lines


def prepare(a: argparse.Namespace, method: str, count: int, size: int) -> list[str]:
    """Load, prepare and write the weights; returns the summary lines."""
    opened = read_suite_checkpoint(a.checkpoint)
    info = opened.info()
    trunk = opened.load_trunk(**({"geometry": a.geometry} if a.geometry else {}))
    resolve_mode(trunk, a.mode)  # fail before reading any rescaling images
    images = None
    if method != "none":
        try:
            images = rescale_batch(a.rescale_data, count, size, trunk.input_space)
        except DataLayoutError as e:
            raise ConfigError(f"--rescale-data={e}") from e
        check_crop(trunk, images, size)
    absorbed = trunk if a.no_absorb else absorb_batch_norm(trunk)
    before = measured_ratios(absorbed, images, a) if images is not None else None
    prepared, report = prepare_with_report(absorbed, a.mode, absorb_bn=False, rescale=method, images=images,
                                           seed=a.seed, calibration_draws=a.calibration_draws)
    after = measured_ratios(prepared, images, a) if images is not None else None
    n = int(images.shape[0]) if images is not None else 0
    meta: dict[str, Any] = {
        "source": info["source"], "method": info["method"], "absorbed_bn": not a.no_absorb, "rescale": method,
        "rescale_data": str(a.rescale_data) if n else None, "rescale_images": n, "rescale_size": size if n else None,
        "geometry": trunk.config.get("geometry"), "ratios_before": before, "ratios_after": after}
    if "calibration" in report:
        meta["calibration"] = {**report["calibration"], "draws": a.calibration_draws, "seed": a.seed}
    save_prepared(prepared, a.out, meta)
    steps = ["batch norm absorbed" if not a.no_absorb else "batch norm kept",
             f"{method} rescaling on {n} images" if n else "not rescaled"]
    summary = (f"ssl-bench: {info['method']} prepared for fine-tuning (mode {prepared_mode(prepared)}, "
               f"input {prepared.input_space}, {', '.join(steps)}) -> {a.out}")
    return [summary, *(ratio_lines(before, after) if before and after else [])]


def main(argv: Sequence[str]) -> int:
    """Returns the exit code: 0 ok, 2 user error (one line on stderr)."""
    return run_argparse_command(build_parser(), argv, lambda a: "\n".join(prepare(a, *rescale_settings(a))))
