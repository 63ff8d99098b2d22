"""Compute options on this machine, each as a ratio vs the fp32, contiguous, eager reference of the same run.

1. One colorization training step (uint8 batch -> Lab, targets -> forward, loss, backward, Adam) for
   alexnet_small at batch 128, crop 56 (the demo's) and the faithful AlexNet at a small batch
   (8 at crop 176): fp32 vs bf16 autocast x contiguous vs channels_last (eager), and torch.compile of
   the trunk as pretraining's ``compile=true`` does it (fp32, the module's default channels_last):
   steady-state images/s, and the warm-up (the first compiled step, forward + backward compilation,
   with a fresh inductor cache unless --warm-cache).
2. Probe feature extraction (FeatureExtractor, conv1..conv5, bilinear resize, inference_mode) in
   images/s: batch 32 vs 256, channels_last on/off, bf16 autocast on/off; reference: fp32, contiguous,
   batch 32.

--quick keeps every alexnet_small case and the faithful AlexNet's eager training cases (fewer rounds);
it leaves out the faithful AlexNet's compilation and feature extraction (minutes on 2 busy cores).

The cases of each group run in interleaved rounds (one call of each case per round, after an untimed
warm-up call), so machine noise hits them alike; medians are reported.

    python bench/compute.py [--quick] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from probe import POOLING
from train_step import images, make_module, make_step  # bench/ is on sys.path when run as a script

from ssl_bench.models.alexnet import CONV_LAYERS, alexnet, alexnet_small
from ssl_bench.probe.heads import FeatureExtractor
from ssl_bench.runs.pretrain import compile_trunk


def interleaved(fns: dict, rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, one call of each per round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def train_cases(name: str, trunk_fn, batch: int, size: int, rounds: int, device: str, compile_: bool) -> list[dict]:
    imgs = images(batch, size).to(device)
    fns, warmup = {}, {}
    for bf16 in (False, True):
        for cl in (False, True):
            torch.manual_seed(0)
            fns[(bf16, cl, False)] = make_step(make_module(trunk_fn(), device, cl), imgs, device, bf16)
    if compile_:
        torch.manual_seed(0)
        m = make_module(trunk_fn(), device, True)
        compile_trunk(m)
        fns[(False, True, True)] = make_step(m, imgs, device, False)
    for k, fn in fns.items():  # untimed warm-up call; for the compiled case, the compilation
        t = time.perf_counter()
        fn()
        warmup[k] = time.perf_counter() - t
    med = interleaved(fns, rounds)
    ref = med[(False, False, False)]
    rows = []
    for (bf16, cl, comp), s in med.items():
        rows.append({"trunk": name, "batch": batch, "crop": size, "bf16": bf16, "channels_last": cl,
                     "compiled": comp, "step_s": s, "images_per_s": batch / s, "vs_reference": ref / s,
                     "first_step_s": warmup[(bf16, cl, comp)]})
    return rows


def feature_cases(name: str, trunk_fn, crop: int, batches: tuple[int, ...], rounds: int, device: str) -> list[dict]:
    torch.manual_seed(0)
    base = trunk_fn().to(device)
    extractors = {cl: FeatureExtractor(copy.deepcopy(base), CONV_LAYERS, "bilinear", "L", channels_last=cl,
                                      pooling=POOLING)
                  for cl in (False, True)}
    data = {b: torch.randint(0, 256, (b, 3, crop, crop), dtype=torch.uint8, device=device) for b in batches}
    kind = device.split(":")[0]

    def extract(b: int, cl: bool, bf16: bool):
        ctx = (lambda: torch.autocast(device_type=kind, dtype=torch.bfloat16)) if bf16 else nullcontext

        def run():
            with torch.inference_mode(), ctx():
                extractors[cl](data[b])
            if kind == "cuda":
                torch.cuda.synchronize()
        return run

    fns = {(b, cl, bf16): extract(b, cl, bf16) for b in batches for cl in (False, True) for bf16 in (False, True)}
    for fn in fns.values():
        fn()
    med = interleaved(fns, rounds)
    ref = batches[0] / med[(batches[0], False, False)]
    return [{"trunk": name, "crop": crop, "batch": b, "channels_last": cl, "bf16": bf16,
             "images_per_s": b / s, "vs_reference": b / s / ref} for (b, cl, bf16), s in med.items()]


def label(r: dict) -> str:
    parts = ["bf16" if r["bf16"] else "fp32", "channels_last" if r["channels_last"] else "contiguous"]
    return " ".join(parts + (["compiled"] if r.get("compiled") else ["eager"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    ap.add_argument("--warm-cache", action="store_true",
                    help="keep inductor's on-disk cache (default: a fresh one, so the warm-up is a first compilation)")
    ap.add_argument("--json")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    fresh_cache = None
    if not a.warm_cache:  # read by inductor at its first compilation
        fresh_cache = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_compute_inductor_")
    train_rows, feat_rows = [], []
    # --quick: the faithful AlexNet's training cases eager only (its compilation alone takes 40-90 s
    # on 2 busy cores), and its feature extraction (20 s per batch of 256 at crop 227) left out
    for name, fn, batch, size, rounds in [("alexnet_small", alexnet_small, 128, 56, 5 if a.quick else 15),
                                          ("alexnet", alexnet, 8, 176, 2 if a.quick else 5)]:
        compile_ = not a.no_compile and not (a.quick and name == "alexnet")
        train_rows += train_cases(name, fn, batch, size, rounds, a.device, compile_)
    for name, fn, crop, rounds in [("alexnet_small", alexnet_small, 56, 5 if a.quick else 15),
                                   ("alexnet", alexnet, 227, 0 if a.quick else 3)]:
        if rounds:
            feat_rows += feature_cases(name, fn, crop, (32, 256), rounds, a.device)

    if fresh_cache:
        shutil.rmtree(fresh_cache, ignore_errors=True)
    print(f"# compute options, device={a.device} torch={torch.__version__} threads={torch.get_num_threads()}")
    print("| training step | batch | crop | case | step (s) | images/s | vs fp32 contiguous eager | first step (s) |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in train_rows:
        print(f"| {r['trunk']} | {r['batch']} | {r['crop']} | {label(r)} | {r['step_s']:.3f} | {r['images_per_s']:.1f} "
              f"| {r['vs_reference']:.2f}x | {r['first_step_s']:.2f} |")
    print("| feature extraction (conv1..conv5) | crop | batch | case | images/s | vs fp32 contiguous b32 |\n"
          "|---|---|---|---|---|---|")
    for r in feat_rows:
        print(f"| {r['trunk']} | {r['crop']} | {r['batch']} | {label(r)[:-6]} | {r['images_per_s']:.1f} "
              f"| {r['vs_reference']:.2f}x |")

    rows = []
    for r in train_rows:
        ref = r["images_per_s"] / r["vs_reference"]
        what = f"train step {r['trunk']} b{r['batch']} c{r['crop']}"
        if not (r["bf16"] or r["channels_last"] or r["compiled"]):
            continue
        rows.append({"benchmark": "compute", "case": f"{what}: {label(r)} vs fp32 contiguous eager",
                     "ours": r["images_per_s"], "reference": ref, "unit": "images/s",
                     "ratio": r["vs_reference"], "target": None})
        if r["compiled"]:
            ref_s = r["batch"] / ref
            rows.append({"benchmark": "compute", "case": f"{what}: torch.compile warm-up (first step, "
                         f"{'warm' if a.warm_cache else 'cold'} inductor cache) vs eager step",
                         "ours": r["first_step_s"], "reference": ref_s, "unit": "s",
                         "ratio": r["first_step_s"] / ref_s, "target": None})
    for r in feat_rows:
        if r["batch"] == 32 and not (r["bf16"] or r["channels_last"]):
            continue
        ref = r["images_per_s"] / r["vs_reference"]
        rows.append({"benchmark": "compute", "case": f"features {r['trunk']} c{r['crop']}: b{r['batch']} "
                     f"{label(r)[:-6]} vs b32 fp32 contiguous", "ours": r["images_per_s"], "reference": ref,
                     "unit": "images/s", "ratio": r["vs_reference"], "target": None})
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "train": train_rows, "features": feat_rows,
                                            "torch": torch.__version__, "threads": torch.get_num_threads()},
                                           indent=2))


if __name__ == "__main__":
    main()
