"""``ssl-bench data``: write the synthetic ImageFolder tree, or decode a data set once into a cache."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from ssl_bench.runs.jobs import fail


def _parser() -> argparse.ArgumentParser:
    from ssl_bench.data.synthetic import SyntheticSpec
    p = argparse.ArgumentParser(prog="ssl-bench data", description="Data preparation commands.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synthetic", help="write the embedded synthetic ImageFolder tree")
    d = SyntheticSpec()
    s.add_argument("--out", required=True, help="output folder (ImageFolder layout: OUT/train, OUT/val)")
    s.add_argument("--classes", type=int, default=d.num_classes)
    s.add_argument("--train-per-class", type=int, default=d.train_per_class)
    s.add_argument("--val-per-class", type=int, default=d.val_per_class)
    s.add_argument("--size", type=int, default=d.image_size, help="image side in pixels")
    s.add_argument("--seed", type=int, default=d.seed)
    s.add_argument("--format", choices=("jpeg", "png"), default=d.image_format)
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--overwrite", action="store_true")
    c = sub.add_parser("cache", help="decode a dataset once into a memory-mapped uint8 cache (data.decoded_cache)")
    c.add_argument("--root", required=True, help="data root (data.root)")
    c.add_argument("--out", required=True, help="cache folder (data.decoded_cache); splits go to OUT/train, OUT/val")
    c.add_argument("--split", choices=("train", "val", "both"), default="both")
    c.add_argument("--size", type=int, default=None,
                   help="short side -> S, centre crop S x S (= data.load_size; default: the first image's "
                        "native short side, as data.load_size=null)")
    c.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes")
    c.add_argument("--layout", choices=("imagefolder", "folder"), default="imagefolder", help="data.layout")
    c.add_argument("--val-fraction", type=float, default=0.02, help="data.val_fraction (layout=folder)")
    c.add_argument("--seed", type=int, default=0, help="seed (layout=folder train/val split)")
    c.add_argument("--max-train-images", type=int, default=None, help="data.max_train_images")
    c.add_argument("--overwrite", action="store_true", help="rebuild an existing cache")
    return p


def _cache(a: argparse.Namespace) -> None:
    from ssl_bench.data.datamodule import ImageDataModule
    from ssl_bench.data.decoded_cache import build_cache, native_size
    dm = ImageDataModule(a.root, layout=a.layout, crop_size=1, load_size=a.size, val_fraction=a.val_fraction,
                         max_train_images=a.max_train_images, seed=a.seed)
    dm.setup()
    size = a.size or native_size([q for q, _ in dm.train_samples])
    for split in (("train", "val") if a.split == "both" else (a.split,)):
        out = build_cache(Path(a.out) / split, dm.train_samples if split == "train" else dm.val_samples,
                          dm.root, size, split=split, classes=dm.classes, workers=a.workers,
                          overwrite=a.overwrite, progress=True)
        meta = json.loads((out / "meta.json").read_text())
        print(f"ssl-bench: {split}: {meta['n']} images of {size} x {size} px in {out}"
              + (f"; {meta['num_skipped']} unreadable file(s) skipped (listed in meta.json)"
                 if meta["num_skipped"] else ""))
    print(f"ssl-bench: use it with data.root={dm.root} data.decoded_cache={Path(a.out).expanduser()}"
          + (f" data.load_size={a.size}" if a.size else " data.load_size=null"))


def _synthetic(a: argparse.Namespace) -> None:
    from ssl_bench.data.synthetic import SyntheticSpec, generate
    spec = SyntheticSpec(num_classes=a.classes, train_per_class=a.train_per_class,
                         val_per_class=a.val_per_class, image_size=a.size, seed=a.seed,
                         image_format=a.format)
    out = generate(a.out, spec, workers=a.workers, overwrite=a.overwrite, progress=True)
    print(f"ssl-bench: synthetic data in {out}")


def main(argv: Sequence[str]) -> int:
    from ssl_bench.errors import SuiteError
    a = _parser().parse_args(argv)
    try:
        (_cache if a.cmd == "cache" else _synthetic)(a)
    except SuiteError as e:
        fail(e)
    return 0
