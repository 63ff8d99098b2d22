"""Training throughput of every pretext on this machine, and what its pretext machinery costs.

For each method, on the same CPU-sized AlexNet (alexnet_small) and synthetic uint8 batches:
- the full training step (uint8 batch -> the pretext's inputs and targets -> forward, loss, backward,
  Adam), as images/s;
- the pretext machinery alone (colorization: Lab + decimation + soft-encoding + weights; context
  prediction: patch-pair sampling + colour dropping + pixelation; context encoder: masks + overlap
  weights + masked input; supervised: input normalisation), as a fraction of the step.
Issue target: the patch and mask generation is not the bottleneck (a small fraction of the step).

    python bench/pretexts.py [--batch 128] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch
from train_step import images, timeit  # bench/ is on sys.path when run as a script

from ssl_bench import color
from ssl_bench.models.alexnet import alexnet_small
from ssl_bench.models.inputs import trunk_input
from ssl_bench.pretext.colorization import ColorizationPretext, ColorObjective
from ssl_bench.pretext.context_encoder import ContextEncoderPretext
from ssl_bench.pretext.context_prediction import ContextPredictionPretext
from ssl_bench.pretext.masks import input_hole, loss_weights, make_masks
from ssl_bench.pretext.patches import drop_color, pixelate, sample_patch_pairs
from ssl_bench.pretext.supervised import SupervisedPretext


def adam(p):
    return torch.optim.Adam(p, lr=1e-4)


def methods(batch: int) -> dict:
    """name -> (module, uint8 batch, machinery-only function)."""
    g = torch.Generator().manual_seed(0)
    prior = torch.full((color.NUM_BINS,), 1.0 / color.NUM_BINS)
    x56, x64 = images(batch, 56), images(batch, 64)
    labels = torch.randint(0, 16, (batch,))

    def color_machinery():
        L, ab = color.lab_from_uint8(x56, 8)
        idx, w = color.soft_encode(ab, 10, 5.0)
        color.pixel_weights(ab, idx[:, 0], torch.ones(color.NUM_BINS))

    def cp_machinery():
        a, b, _, _ = sample_patch_pairs(x64, 16, 4, 2, generator=g)
        p = torch.cat([trunk_input(a, "rgb"), trunk_input(b, "rgb")])
        pixelate(drop_color(p, g), 1 / 3, 16, g)

    def ce_machinery():
        m = make_masks("center", batch, 56, g)
        hole = input_hole(m, 2)
        loss_weights(m, 2, 10.0)
        trunk_input(x56, "rgb").masked_fill(hole, 0.0)

    return {
        "colorization": (ColorizationPretext(alexnet_small(), ColorObjective(), adam, prior=prior),
                         {"image": x56}, color_machinery),
        "context_prediction": (ContextPredictionPretext(alexnet_small(input_space="rgb"), adam, patch_size=16,
                                                        gap=4, jitter=2, pixelate_pixels=16, head_channels=512),
                               {"image": x64}, cp_machinery),
        "context_encoder": (ContextEncoderPretext(alexnet_small(input_space="rgb"), adam, image_size=56, overlap=2),
                            {"image": x56}, ce_machinery),
        "supervised": (SupervisedPretext(alexnet_small(input_space="rgb"), adam, num_classes=16),
                       {"image": x56, "label": labels}, lambda: trunk_input(x56, "rgb")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true", help="2 repeats")
    a = ap.parse_args()
    if a.quick:
        a.repeats = min(a.repeats, 2)
    warnings.filterwarnings("ignore")  # self.log outside a Trainer
    torch.manual_seed(0)
    rows = {}
    print(f"# pretext training steps, alexnet_small, batch {a.batch}, CPU threads {torch.get_num_threads()}")
    print(f"{'method':<20} {'step ms':>8} {'img/s':>8} {'machinery ms':>13} {'fraction':>9}")
    for name, (module, batch, machinery) in methods(a.batch).items():
        module.train()
        opt = module.configure_optimizers()
        opt = opt["optimizer"] if isinstance(opt, dict) else opt
        batch = {"label": torch.zeros(a.batch, dtype=torch.long), "skipped": [], **batch}

        def step():
            loss = module.training_step(batch, 0)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t_step = timeit(step, a.repeats)
        with torch.no_grad():
            t_mach = timeit(machinery, a.repeats)
        rows[name] = {"step_ms": 1e3 * t_step, "images_per_s": a.batch / t_step,
                      "machinery_ms": 1e3 * t_mach, "machinery_fraction": t_mach / t_step}
        r = rows[name]
        print(f"{name:<20} {r['step_ms']:8.1f} {r['images_per_s']:8.0f} {r['machinery_ms']:13.2f} "
              f"{r['machinery_fraction']:9.3f}")
    table = [{"benchmark": "pretexts", "case": f"{k}, alexnet_small b{a.batch}: pretext machinery / full step "
              f"({r['images_per_s']:.0f} images/s)", "ours": r["machinery_ms"], "reference": r["step_ms"],
              "unit": "ms", "ratio": r["machinery_fraction"], "target": None} for k, r in rows.items()]
    if a.json:
        with open(a.json, "w") as f:
            json.dump({**rows, "rows": table}, f, indent=2)


if __name__ == "__main__":
    main()
