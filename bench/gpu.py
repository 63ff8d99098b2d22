"""GPU measurements in one short run on a CUDA machine.

Depends on torch and numpy only (no Lightning / Hydra / W&B), so it runs on a bare GPU image from a
copy of the repository (``PYTHONPATH=. python bench/gpu.py`` when the package is not installed).
Data are synthetic uint8 batches resident on the device; every step includes
the pretext's own machinery (Lab + ab decimation + exact soft-encoding for colorization; patch-pair
sampling for context prediction; masks for the context encoder) on the device.

Measured, for fp32 (TF32 matmuls allowed, as PyTorch's defaults on Ampere+ for convolutions) and bf16
autocast, channels_last:
- colorization pretraining, the faithful AlexNet (crop 176, ab / 8, 313-way soft CE, Adam), batch 80
  (the authors') and a larger batch: samples/s and model FLOPs utilisation (MFU = 3 x forward FLOPs x
  samples/s / peak);
- context prediction (96 px patch pairs, RGB trunk to fc6, 4096-wide fc7/fc8 head, batch 256 pairs);
- context encoder (128 px input, centre mask, trunk to pool5 + up-convolution decoder, batch 64);
- probe feature extraction (conv1..conv5, crop 227, batch 256, inference mode).

    python bench/gpu.py --json $OUT/gpu.json [--peak-tflops-bf16 989 --peak-tflops-fp32 495] [--quick]

Peaks default from the device name (H100 SXM: 989 bf16 / 495 TF32 dense; H200 the same silicon).
Target: >= 35% MFU for colorization AlexNet pretraining in bf16 on an H100.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench import color
from ssl_bench.models.alexnet import alexnet, count_flops
from ssl_bench.models.inputs import trunk_input
from ssl_bench.pretext.losses import resize_to, soft_cross_entropy_map
from ssl_bench.pretext.masks import center_mask, input_hole, loss_weights
from ssl_bench.pretext.patches import drop_color, sample_patch_pairs

PEAKS = {"H100": (989.0, 495.0), "H200": (989.0, 495.0), "A100": (312.0, 156.0)}  # TFLOPS bf16, tf32


def uint8_batch(n: int, size: int, device: str) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(0)
    low = torch.rand(n, 3, 8, 8, generator=g)
    x = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return (x.clamp(0, 1) * 255).to(torch.uint8).to(device)


ORDER = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7")


def trunk_to(trunk: nn.Module, last: str) -> nn.Sequential:
    """The trunk's modules up to ``last`` (FLOPs of exactly what a run computes)."""
    return nn.Sequential(*(getattr(trunk, n) for n in ORDER[: ORDER.index(last) + 1]))


def timed(step, iters: int, warmup: int, device: str) -> float:
    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def autocast(dtype: str, device: str):
    return torch.autocast(device, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


def colorization(batch: int, dtype: str, device: str, crop: int):
    trunk = alexnet().to(device).to(memory_format=torch.channels_last)
    head = nn.Conv2d(trunk.out_channels, color.NUM_BINS, 1).to(device)
    opt = torch.optim.Adam(list(trunk.parameters()) + list(head.parameters()), lr=1e-5)
    images = uint8_batch(batch, crop, device)

    def step():
        L, ab = color.lab_from_uint8(images, 8)
        idx, w = color.soft_encode(ab, 10, 5.0)
        with autocast(dtype, device):
            out = head(trunk((L - 50).contiguous(memory_format=torch.channels_last)))
        loss = soft_cross_entropy_map(resize_to(out.float(), tuple(ab.shape[-2:])), idx, w).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    fwd = count_flops(nn.Sequential(trunk, head), torch.zeros(1, 1, crop, crop, device=device))
    return step, 3 * fwd


def context_prediction(batch: int, dtype: str, device: str, patch: int = 96):
    trunk = alexnet(input_space="rgb").to(device).to(memory_format=torch.channels_last)
    fc = trunk.out_channels
    head = nn.Sequential(nn.Linear(2 * fc, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                         nn.Linear(4096, 8)).to(device)
    opt = torch.optim.SGD(list(trunk.parameters()) + list(head.parameters()), lr=1e-5, momentum=0.9)
    images = uint8_batch(batch, 3 * patch + 2 * (patch // 2) + 2 * 7 + 2, device)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def step():
        a, b, labels, _ = sample_patch_pairs(images, patch, patch // 2, 7, generator=gen)
        x = drop_color(torch.cat([trunk_input(a, "rgb"), trunk_input(b, "rgb")]), gen)
        with autocast(dtype, device):
            f = trunk.forward_features(x.contiguous(memory_format=torch.channels_last), ("fc6",))["fc6"]
            f = f.mean(dim=(2, 3))
            logits = head(torch.cat([f[:batch], f[batch:]], dim=1))
        loss = F.cross_entropy(logits.float(), labels.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    fwd = count_flops(trunk_to(trunk, "fc6"), torch.zeros(2, 3, patch, patch, device=device))
    fwd += 2 * (2 * fc * 4096 + 4096 * 4096 + 4096 * 8)  # the fused head, per pair
    return step, 3 * fwd


def context_encoder(batch: int, dtype: str, device: str, size: int = 128):
    trunk = alexnet(input_space="rgb").to(device).to(memory_format=torch.channels_last)
    c5 = trunk.widths[4]
    layers, ch, res = [], c5, size // 16
    while res < size:  # the suite's decoder shape: up-convolutions doubling the resolution
        out = 3 if res * 2 >= size else max(16, ch // 2)
        layers += [nn.ConvTranspose2d(ch, out, 4, 2, 1)] + (
            [nn.BatchNorm2d(out), nn.ReLU()] if out != 3 else [nn.Tanh()])
        ch, res = out, res * 2
    decoder = nn.Sequential(*layers).to(device)
    opt = torch.optim.Adam(list(trunk.parameters()) + list(decoder.parameters()), lr=2e-4, betas=(0.5, 0.999))
    images = uint8_batch(batch, size, device)
    mask = center_mask(batch, size, device)
    hole, weights = input_hole(mask, 4), loss_weights(mask, 4, 10.0)

    def step():
        x = trunk_input(images, "rgb").masked_fill(hole, 0.0)
        target = images.float() / 127.5 - 1
        with autocast(dtype, device):
            feat = trunk.pool5(
                trunk.forward_features(x.contiguous(memory_format=torch.channels_last), ("conv5",))["conv5"])
            pred = F.interpolate(decoder(feat).float(), size=(size, size), mode="bilinear", align_corners=False)
        loss = (weights * (pred - target).pow(2).sum(1, keepdim=True)).sum() / weights.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    probe = torch.zeros(1, 3, size, size, device=device)
    dec = count_flops(decoder, torch.zeros(1, c5, size // 16, size // 16, device=device))
    return step, 3 * (count_flops(trunk_to(trunk, "conv5"), probe) + dec)


def extraction(batch: int, dtype: str, device: str, crop: int = 227):
    trunk = alexnet().to(device).to(memory_format=torch.channels_last).eval()
    images = uint8_batch(batch, crop, device)

    @torch.inference_mode()
    def step():
        with autocast(dtype, device):
            trunk.forward_features(trunk_input(images, "L").contiguous(memory_format=torch.channels_last))
    return step, count_flops(trunk_to(trunk, "conv5"), torch.zeros(1, 1, crop, crop, device=device))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true", help="tiny batches and crops (CPU smoke check)")
    ap.add_argument("--peak-tflops-bf16", type=float)
    ap.add_argument("--peak-tflops-fp32", type=float)
    a = ap.parse_args()
    dev = a.device
    name = torch.cuda.get_device_name() if dev == "cuda" else platform.processor() or "cpu"
    peaks = next((p for k, p in PEAKS.items() if k in name), (None, None))
    peak = {"bf16": a.peak_tflops_bf16 or peaks[0], "fp32": a.peak_tflops_fp32 or peaks[1]}
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    q = a.quick
    runs = [("colorization b80", colorization, 80 if not q else 2, {"crop": 176 if not q else 64}),
            ("colorization b256", colorization, 256 if not q else 4, {"crop": 176 if not q else 64}),
            ("context_prediction b256", context_prediction, 256 if not q else 2, {"patch": 96 if not q else 24}),
            ("context_encoder b64", context_encoder, 64 if not q else 2, {"size": 128 if not q else 64}),
            ("probe extraction b256", extraction, 256 if not q else 2, {"crop": 227 if not q else 64})]
    rows = []
    print(f"# {name}, torch {torch.__version__}, device {dev}")
    print(f"{'run':<26} {'dtype':<5} {'samples/s':>10} {'TFLOP/s':>8} {'MFU':>6}")
    for label, build, batch, kw in runs:
        for dtype in ("fp32", "bf16"):
            torch.manual_seed(0)
            step, flops_per_sample = build(batch, dtype, dev, **kw)
            s = timed(step, 3 if q else 20, 1 if q else 5, dev)
            rate = batch / s
            tflops = flops_per_sample * rate / 1e12
            mfu = tflops / peak[dtype] if peak[dtype] else None
            rows.append({"run": label, "dtype": dtype, "batch": batch, "samples_per_s": rate,
                         "tflops": tflops, "mfu": mfu, "gflop_per_sample": flops_per_sample / 1e9})
            print(f"{label:<26} {dtype:<5} {rate:10.1f} {tflops:8.2f} {'' if mfu is None else f'{mfu:6.1%}'}")
            del step
            if dev == "cuda":
                torch.cuda.empty_cache()
    if a.json:
        Path(a.json).write_text(json.dumps({"device": name, "torch": torch.__version__, "peak_tflops": peak,
                                            "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
