"""Can the data path keep up with the model? images/s of the input pipeline alone vs the training step alone.

Data path (on generated synthetic JPEGs, the datamodule's own loaders, batch --batch):
  (a) files:  DataLoader workers decode each file, random crop + flip (the current path,
      data.decoded_cache=null), batches moved to --device;
  (b) cache:  batched reads from the pre-decoded memory-mapped uint8 cache (data.decoded_cache=DIR),
      moved to --device, then `crop_flip` at the seeded offsets there (as ImageDataModule.on_after_batch_transfer);
  (c) device decode: workers only read the file bytes; ``decode_jpeg`` decodes the batch on --device,
      then resize / crop / flip there (data.decode=device; with --device cpu this is the CPU decoder
      in the main process, not nvJPEG).
Model step: forward + backward + Adam on a batch already on the device, for each pretext with the
shapes and constructors of bench/pretexts.py (alexnet_small; crop 56, context prediction 64).
ratio = data path images/s / model step images/s; the data path keeps up when it is >= 1.

    python bench/data_path.py [--quick] [--device cpu|cuda] [--workers 2] [--json out.json]

On a CPU-only machine both sides share the same cores, so the ratio says little about a GPU run; run
it with --device cuda where one is available (the files path then has --workers CPU processes).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch
from pretexts import methods
from train_step import timeit

from ssl_bench.data.datamodule import ImageDataModule
from ssl_bench.data.decoded_cache import crop_flip, decode_on_device, seeded_offsets
from ssl_bench.data.images import train_transform
from ssl_bench.data.synthetic import SyntheticSpec, generate

CROP = {"colorization": 56, "context_prediction": 64, "context_encoder": 56, "supervised": 56}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def loader_rate(dm: ImageDataModule, device: str, passes: int, on_device: str = "") -> float:
    """images/s over ``passes`` epochs of the train loader, after one warm-up batch (worker start).
    on_device: "crop" (cache: crop_flip at the samples' seeded offsets), "decode" (data.decode=device)
    or "" (nothing)."""
    if on_device == "decode":
        dm._decode_on_device = lambda: True  # as while a trainer runs: the loader hands over file bytes
    loader = dm.train_dataloader()
    transform = train_transform(dm.crop_size, dm.load_size)
    n, t0 = 0, None
    for _ in range(passes + 1):
        for batch in loader:
            if on_device == "decode":
                batch["label"] = batch["label"].to(device)
                x = decode_on_device(batch, transform)["image"]
            else:
                x = batch["image"].to(device, non_blocking=True)
            if on_device == "crop":  # as ImageDataModule.on_after_batch_transfer
                top, left, flip = seeded_offsets(batch["seeds"].to(device), x.shape[-2], x.shape[-1], dm.crop_size)
                x = crop_flip(x, top, left, flip, dm.crop_size)
            if t0 is None:  # the first batch pays for starting the workers
                sync(device)
                t0 = time.perf_counter()
                continue
            n += x.shape[0]
    sync(device)
    return n / (time.perf_counter() - t0)


def model_rates(batch: int, repeats: int, device: str) -> dict[str, float]:
    rates = {}
    for name, (module, data, _) in methods(batch).items():
        module = module.to(device).train()
        opt = module.configure_optimizers()
        opt = opt["optimizer"] if isinstance(opt, dict) else opt
        data = {"label": torch.zeros(batch, dtype=torch.long), "skipped": [], **data}
        data = {k: v.to(device) if torch.is_tensor(v) else v for k, v in data.items()}

        def step():
            loss = module.training_step(data, 0)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync(device)

        rates[name] = batch / timeit(step, repeats)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few images and repeats (about a minute on 2 cores)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="loader workers (files path)")
    ap.add_argument("--cache-workers", type=int, default=0, help="loader workers reading the cache")
    ap.add_argument("--image-size", type=int, default=64, help="synthetic image side (decode cost)")
    ap.add_argument("--json")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")  # self.log outside a Trainer
    torch.manual_seed(0)
    per_class, passes, repeats = (32, 2, 3) if a.quick else (128, 3, 5)
    tmp = Path(tempfile.mkdtemp(prefix="ssl_bench_data_path."))
    root = generate(tmp / "data", SyntheticSpec(num_classes=16, train_per_class=per_class, val_per_class=1,
                                                image_size=a.image_size, seed=0), workers=a.workers)
    n_train = 16 * per_class
    print(f"# data path vs model step: {n_train} synthetic {a.image_size} px JPEGs, batch {a.batch}, "
          f"device {a.device}, files path {a.workers} workers, CPU threads {torch.get_num_threads()}")

    data: dict[tuple[str, int], float] = {}
    build_rate = None
    for crop in sorted(set(CROP.values())):
        common = dict(crop_size=crop, load_size=None, batch_size=a.batch, seed=0)
        files = ImageDataModule(str(root), num_workers=a.workers, **common)
        files.setup()
        data["files", crop] = loader_rate(files, a.device, passes)
        data["decode", crop] = loader_rate(ImageDataModule(str(root), num_workers=a.workers, decode="device", **common),
                                           a.device, passes, on_device="decode")
        cache = ImageDataModule(str(root), num_workers=a.cache_workers, decoded_cache=str(tmp / "cache"), **common)
        t = time.perf_counter()
        cache.num_workers = a.workers  # parallel build, then read with --cache-workers
        cache.prepare_data()
        if build_rate is None:
            build_rate = (n_train + 16) / (time.perf_counter() - t)
        cache.num_workers = a.cache_workers
        cache.setup()
        data["cache", crop] = loader_rate(cache, a.device, passes, on_device="crop")
    model = model_rates(a.batch, repeats, a.device)

    rows = []
    kinds = ("files", "cache", "decode")
    print(f"{'pretext':<20} {'crop':>4} {'model img/s':>12}"
          + "".join(f" {k + ' img/s':>13} {'ratio':>6}" for k in kinds))
    for name, rate in model.items():
        crop = CROP[name]
        print(f"{name:<20} {crop:>4} {rate:12.0f}" + "".join(
            f" {data[k, crop]:13.0f} {data[k, crop] / rate:6.2f}" for k in kinds))
        for kind in kinds:
            value = data[kind, crop]
            kind = {"decode": f"device decode ({a.device})"}.get(kind, kind)
            rows.append({"benchmark": "data_path", "case": f"{name}: {kind} images/s vs model step images/s",
                         "ours": value, "reference": rate, "unit": "images/s", "ratio": value / rate,
                         "target": ">= 1"})
    rows.append({"benchmark": "data_path", "case": "cache build (decode + write) images/s",
                 "ours": build_rate, "reference": data["files", 56], "unit": "images/s",
                 "ratio": build_rate / data["files", 56], "target": None})
    print(f"cache build: {build_rate:.0f} images/s ({a.workers} decoding processes)")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows}, indent=2))
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
