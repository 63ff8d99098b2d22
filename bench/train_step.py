"""Colorization training-step benchmarks (CPU by default; --device cuda works too).

1. Pretext overhead: a full colorization step (uint8 batch -> Lab, decimation, soft-encoding,
   rebalancing weights, forward, loss, backward, Adam) against the same network's step on
   precomputed targets. Target: ratio <= 1.15.
2. Pretraining throughput (images/s) for alexnet_small and the faithful AlexNet, fp32 vs bf16
   autocast, contiguous vs channels_last.

    python bench/train_step.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch

from ssl_bench import color
from ssl_bench.models.alexnet import alexnet, alexnet_small
from ssl_bench.pretext.colorization import ColorizationPretext, ColorObjective
from ssl_bench.pretext.losses import soft_cross_entropy


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random colour fields (realistic ab spread), uint8 N x 3 x size x size."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return (x.clamp(0, 1) * 255).to(torch.uint8)


def timeit(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def make_module(trunk, device, channels_last: bool) -> ColorizationPretext:
    prior = torch.full((color.NUM_BINS,), 1.0 / color.NUM_BINS)
    m = ColorizationPretext(trunk, ColorObjective(), lambda p: torch.optim.Adam(p, lr=1e-5),
                            prior=prior, channels_last=channels_last)
    return m.to(device)


def overhead(trunk_fn, batch: int, size: int, repeats: int, device: str) -> dict:
    """Full step vs network-only step on the same data (targets precomputed outside the timer)."""
    torch.manual_seed(0)
    m = make_module(trunk_fn(), device, True)
    opt = m.configure_optimizers()
    imgs = images(batch, size).to(device)
    L, ab = color.lab_from_uint8(imgs, m.ab_stride)
    idx, w = color.soft_encode(ab)
    pw = color.pixel_weights(ab, idx[:, 0], m.bin_weights)
    x = (L - 50).contiguous(memory_format=torch.channels_last)  # as the module feeds it

    def full():
        out, ab_, _ = m(imgs)
        loss, _ = m.objective.loss(out, ab_, m.bin_weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def net_only():
        from ssl_bench.pretext.losses import resize_to
        out = resize_to(m.head(m.trunk(x)), tuple(ab.shape[-2:]))
        loss = soft_cross_entropy(out, idx, w, pw)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # interleave to share the machine's noise between the two
    a, b = [], []
    for _ in range(repeats):
        a.append(timeit(full, 1, 1 if not a else 0))
        b.append(timeit(net_only, 1, 1 if not b else 0))
    fa, fb = statistics.median(a), statistics.median(b)
    return {"full_step_s": fa, "network_step_s": fb, "ratio": fa / fb}


def make_step(m: ColorizationPretext, imgs: torch.Tensor, device: str, bf16: bool):
    """One full colorization training step on ``imgs`` (fp32 or bf16 autocast), as a function."""
    opt = m.configure_optimizers()
    ctx = (lambda: torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)) if bf16 else nullcontext

    def step():
        with ctx():
            out, ab, _ = m(imgs)
            loss, _ = m.objective.loss(out, ab, m.bin_weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return step


def throughput(trunk_fn, batch: int, size: int, repeats: int, device: str, bf16: bool, cl: bool) -> float:
    torch.manual_seed(0)
    m = make_module(trunk_fn(), device, cl)
    step = make_step(m, images(batch, size).to(device), device, bf16)
    return batch / timeit(step, repeats, 1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="fewer repeats, small faithful batch")
    p.add_argument("--json")
    a = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    r = 3 if a.quick else 7
    res: dict = {"device": a.device, "torch": torch.__version__, "threads": torch.get_num_threads()}
    res["overhead_small"] = overhead(alexnet_small, 128, 56, r, a.device)
    res["overhead_faithful"] = overhead(alexnet, 4, 180, r, a.device)
    rows = []
    for name, fn, batch, size in [("alexnet_small", alexnet_small, 128, 56), ("alexnet", alexnet, 4, 180)]:
        for bf16 in (False, True):
            for cl in (False, True):
                ips = throughput(fn, batch, size, max(2, r // 2), a.device, bf16, cl)
                rows.append({"trunk": name, "batch": batch, "crop": size, "bf16": bf16,
                             "channels_last": cl, "images_per_s": ips})
    res["throughput"] = rows
    print(f"device={a.device} torch={torch.__version__} threads={res['threads']}")
    for k in ("overhead_small", "overhead_faithful"):
        o = res[k]
        print(f"{k}: full step {o['full_step_s'] * 1e3:.1f} ms, network only {o['network_step_s'] * 1e3:.1f} ms, "
              f"ratio {o['ratio']:.3f} (target <= 1.15)")
    print("| trunk | batch | crop | bf16 | channels_last | images/s |\n|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['trunk']} | {row['batch']} | {row['crop']} | {row['bf16']} | {row['channels_last']} "
              f"| {row['images_per_s']:.1f} |")
    res["rows"] = [{"benchmark": "train_step",
                    "case": f"{trunk} b{b} c{c}: full colorization step vs network-only step",
                    "ours": res[k]["full_step_s"] * 1e3, "reference": res[k]["network_step_s"] * 1e3,
                    "unit": "ms/step", "ratio": res[k]["ratio"], "target": "<= 1.15"}
                   for k, trunk, b, c in (("overhead_small", "alexnet_small", 128, 56),
                                          ("overhead_faithful", "alexnet", 4, 180))]
    for row in rows:
        ref = next(r for r in rows if r["trunk"] == row["trunk"] and not r["bf16"] and not r["channels_last"])
        if row is not ref:
            res["rows"].append({"benchmark": "train_step",
                                "case": f"{row['trunk']} b{row['batch']} c{row['crop']}: "
                                f"{'bf16' if row['bf16'] else 'fp32'} "
                                f"{'channels_last' if row['channels_last'] else 'contiguous'}"
                                " vs fp32 contiguous", "ours": row["images_per_s"], "reference": ref["images_per_s"],
                                "unit": "images/s", "ratio": row["images_per_s"] / ref["images_per_s"], "target": None})
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
