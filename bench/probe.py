"""Probe-harness benchmarks, each measured side by side in one run.

1. Probing all five layers together vs probing one layer (conv5, the deepest: same trunk pass)
   per streaming training step: target <= 1.5x.
2. A probe run that hits the feature cache vs the first run (extraction + fits): target >= 5x.
3. A head-training step on cached features (5 layers x 2 learning rates at the protocol's ~9.4k dims,
   batch 256, 16 classes) vs the same heads with a float64 batch norm per head (statistics and normalisation of
   the N x d batch in float64, once for every head): target >= 2x, the same logits.

    python bench/probe.py [--quick] [--heads-only] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ssl_bench.config import CONF_DIR
from ssl_bench.models.alexnet import CONV_LAYERS, alexnet, alexnet_small
from ssl_bench.probe.heads import FeatureExtractor, LinearProbe, ProbeHeads

# the per-layer sizes the probe configs use
POOLING = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "probe" / "pooling" / "alexnet.yaml"))

def step_time(trunk, layers, batch, crop, repeats, classes=1000) -> float:
    ex = FeatureExtractor(trunk, layers, "bilinear", "L", pooling=POOLING)
    heads = ProbeHeads(ex.dims(crop), classes)
    probe = LinearProbe(heads, lambda g: torch.optim.SGD(g, lr=0.01, momentum=0.9), classes, extractor=ex)
    opt = probe.configure_optimizers()
    imgs = torch.randint(0, 256, (batch, 3, crop, crop), dtype=torch.uint8)
    labels = torch.randint(0, classes, (batch,))

    def step():
        logits = heads(ex(imgs))
        loss = sum(torch.nn.functional.cross_entropy(v, labels) for v in logits.values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def one_vs_five(name, trunk_fn, batch, crop, repeats) -> dict:
    torch.manual_seed(0)
    trunk = trunk_fn()
    # interleave the two so machine noise hits both alike
    one, five = [], []
    for _ in range(repeats):
        one.append(step_time(trunk, ("conv5",), batch, crop, 1))
        five.append(step_time(trunk, CONV_LAYERS, batch, crop, 1))
    o, f = statistics.median(one), statistics.median(five)
    return {"trunk": name, "batch": batch, "crop": crop, "one_layer_s": o, "five_layers_s": f, "ratio": f / o}


class Float64PerHeadNorm(torch.nn.Module):
    """The reference: BatchNorm1d training statistics and normalisation computed in float64."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xd = x.double()
        mean = xd.mean(0)
        var = ((xd - mean) ** 2).mean(0)
        return ((xd - mean) / torch.sqrt(var + 1e-5)).to(x.dtype)


def head_step(repeats: int, batch: int = 256, classes: int = 16) -> dict:
    """Seconds per SGD step of the probe heads on cached features, ours vs the float64 reference."""
    torch.manual_seed(0)
    dims = {k: v for k, v in zip(CONV_LAYERS, (9600, 9216, 9600, 9600, 9216))}  # the bilinear sizes
    feats = {k: torch.rand(batch, d) * 3 for k, d in dims.items()}
    labels = torch.randint(0, classes, (batch,))
    ours = ProbeHeads(dims, classes, [0.01, 0.1]).train()
    ref = ProbeHeads(dims, classes, [0.01, 0.1]).train()
    ref.load_state_dict(ours.state_dict())
    for head in ref.heads:
        head[0] = Float64PerHeadNorm()

    def reference(f):
        return {n: ref.heads[ref.index[n]](f[k]) for n, k in ref.layer_of.items()}

    with torch.no_grad():
        diff = max(float((a - b).abs().max()) for a, b in zip(ours(feats).values(), reference(feats).values()))
    times = {"ours": [], "reference": []}
    for _ in range(repeats):  # interleaved, so that machine noise hits both alike
        for name, fwd, module in (("ours", ours, ours), ("reference", reference, ref)):
            opt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
            t = time.perf_counter()
            loss = sum(torch.nn.functional.cross_entropy(v, labels) for v in fwd(feats).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            times[name].append(time.perf_counter() - t)
    o, r = statistics.median(times["ours"]), statistics.median(times["reference"])
    return {"batch": batch, "ours_s": o, "reference_s": r, "speedup": r / o, "max_logit_diff": diff}


def cache_runs(quick: bool) -> dict:
    """Two identical `ssl-bench probe` runs on the synthetic default; the second hits the cache."""
    from ssl_bench.cli import main
    tmp = Path(tempfile.mkdtemp(prefix="ssl_bench_probe_bench_"))
    per_class = 60 if quick else 400
    base = [f"paths.data_dir={tmp}/data", "init=gaussian",
            f"data.synthetic.train_per_class={per_class}", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false", "backbone=alexnet", "data.synthetic.image_size=128",
            "data.crop_size=112", "data.batch_size=64"]
    # generate the data outside the timed runs
    from ssl_bench.data.synthetic import SyntheticSpec, generate
    generate(tmp / "data" / f"synthetic_c16_px128_n{per_class}_seed0",
             SyntheticSpec(train_per_class=per_class, image_size=128))
    times = {}
    for probe in ("knn", "linear"):
        t = []
        for i in range(2):
            start = time.perf_counter()
            # a fresh cache per probe kind: the first run of each must extract
            main(["probe", f"probe={probe}", *base, f"paths.cache_dir={tmp}/cache_{probe}",
                  f"hydra.run.dir={tmp}/{probe}{i}"])
            t.append(time.perf_counter() - start)
        times[probe] = {"first_s": t[0], "cached_s": t[1], "speedup": t[0] / t[1]}
    return times


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--heads-only", action="store_true", help="only benchmark 3 (a few seconds)")
    p.add_argument("--json")
    a = p.parse_args()
    r = 3 if a.quick else 5
    heads = head_step(10 if a.quick else 30)
    print(f"| head step on cached features, b{heads['batch']} | ours (s) | float64 per head (s) | speed-up "
          f"(target >= 2) | max logit diff |\n|---|---|---|---|---|\n| 5 layers x 2 lrs, 16 classes | "
          f"{heads['ours_s']:.4f} | {heads['reference_s']:.4f} | {heads['speedup']:.2f}x | "
          f"{heads['max_logit_diff']:.1e} |")
    heads_row = {"benchmark": "probe", "case": "head step on cached features: shared float32 norm vs float64 per head",
                 "ours": heads["ours_s"], "reference": heads["reference_s"], "unit": "s/step",
                 "ratio": heads["speedup"], "target": ">= 2"}
    if a.heads_only:
        if a.json:
            Path(a.json).write_text(json.dumps({"head_step": heads, "rows": [heads_row]}, indent=2))
        return
    res = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "one_vs_five": [one_vs_five("alexnet_small", alexnet_small, 256, 56, r),
                           one_vs_five("alexnet", alexnet, 64 if a.quick else 256, 227, r)]}
    argv = sys.argv
    res["cache"] = cache_runs(a.quick)
    sys.argv = argv
    print(f"torch={res['torch']} threads={res['threads']}")
    print("| probe step | batch | crop | conv5 only (s) | conv1..conv5 (s) | ratio (target <= 1.5) |"
          "\n|---|---|---|---|---|---|")
    for row in res["one_vs_five"]:
        print(f"| {row['trunk']} | {row['batch']} | {row['crop']} | {row['one_layer_s']:.3f} | "
              f"{row['five_layers_s']:.3f} | {row['ratio']:.2f} |")
    print("| probe run (faithful AlexNet, 128px synthetic) | first run (s) | cache hit (s) | speed-up (target >= 5) |"
          "\n|---|---|---|---|")
    for k, v in res["cache"].items():
        print(f"| {k} | {v['first_s']:.1f} | {v['cached_s']:.1f} | {v['speedup']:.1f}x |")
    res["rows"] = [{"benchmark": "probe",
                    "case": f"step {r['trunk']} b{r['batch']} c{r['crop']}: conv1..conv5 vs conv5 only",
                    "ours": r["five_layers_s"], "reference": r["one_layer_s"], "unit": "s/step", "ratio": r["ratio"],
                    "target": "<= 1.5" if r["trunk"] == "alexnet" else None} for r in res["one_vs_five"]]
    res["head_step"] = heads
    res["rows"].append(heads_row)
    res["rows"] += [{"benchmark": "probe", "case": f"{k} probe run: cache hit vs first run (speed-up)",
                     "ours": v["cached_s"], "reference": v["first_s"], "unit": "s/run", "ratio": v["speedup"],
                     "target": ">= 5"} for k, v in res["cache"].items()]
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "offline")
    main()
