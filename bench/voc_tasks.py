"""PASCAL VOC fine-tuning throughput per task on this machine (images/s per task).

Each task's real datamodule reads a synthetic VOC-format tree (JPEG decode, augmentation, collation
included, in-process loading) and its real LightningModule runs training steps (forward, loss,
backward, SGD) and test steps (everything its metrics need, collected in the same pass), on the
CPU-sized AlexNet at full widths with the task's faithful input sizes:
classification crop 227 (10-crop test), detection min side 600, segmentation crop 320 (whole-image test).

    python bench/voc_tasks.py [--steps 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from itertools import islice

import torch

from ssl_bench.data.voc_synthetic import write_synthetic_voc
from ssl_bench.models.alexnet import alexnet_small
from ssl_bench.models.prepare import fc_layers, prepare_for_transfer
from ssl_bench.transfer.voc_cls import VOCClassificationData, VOCClassificationTask
from ssl_bench.transfer.voc_det import VOCDetectionData, VOCDetectionTask
from ssl_bench.transfer.voc_seg import VOCSegmentationData, VOCSegmentationTask


def sgd(p):
    return torch.optim.SGD(p, lr=1e-4, momentum=0.9)


def tasks(root: str) -> dict:
    def trunk():
        torch.manual_seed(0)
        return prepare_for_transfer(alexnet_small(input_space="rgb"), "rgb")
    det_trunk = trunk()
    fc6, fc7 = fc_layers(det_trunk)
    return {
        "voc_cls (fc6-8)": (VOCClassificationTask(trunk(), sgd, train_from="fc6"),
                            VOCClassificationData(root, "2007", batch_size=16, test_batch_size=4, num_workers=0)),
        "voc_cls (all)": (VOCClassificationTask(trunk(), sgd, train_from="conv1"),
                          VOCClassificationData(root, "2007", batch_size=16, test_batch_size=4, num_workers=0)),
        "voc_det": (VOCDetectionTask(det_trunk, sgd, fc6=fc6, fc7=fc7),
                    VOCDetectionData(root, "2007", batch_size=2, num_workers=0)),
        "voc_seg": (VOCSegmentationTask(trunk(), sgd),
                    VOCSegmentationData(root, "2012", crop_size=320, batch_size=8, num_workers=0)),
    }


def count(batch: dict) -> int:
    for key in ("image", "images"):
        if key in batch:
            return len(batch[key])
    raise KeyError(sorted(batch))


def run(module, dm, steps: int) -> tuple[float, float]:
    dm.setup("fit")
    module.trainer = None
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    module.train()
    n, t = 0, 0.0
    for i, batch in enumerate(islice(iter(dm.train_dataloader()), steps + 1)):
        t0 = time.perf_counter()
        loss = module.training_step(batch, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:  # the first step warms up
            n, t = n + count(batch), t + time.perf_counter() - t0
    train = n / t
    dm.setup("test")
    module.eval()
    module.on_test_epoch_start() if hasattr(module, "on_test_epoch_start") else None
    n, t0 = 0, time.perf_counter()
    with torch.no_grad():
        for i, batch in enumerate(islice(iter(dm.test_dataloader()), steps)):
            module.test_step(batch, i)
            n += count(batch)
    return train, n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true", help="2 steps per task")
    a = ap.parse_args()
    if a.quick:
        a.steps = min(a.steps, 2)
    warnings.filterwarnings("ignore")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for year in ("2007", "2012"):
            write_synthetic_voc(tmp, num_trainval=48, num_test=24, image_size=375, seed=0, year=year)
        print(f"# VOC fine-tuning throughput, alexnet_small (full widths), CPU threads {torch.get_num_threads()}")
        print(f"{'task':<18} {'train img/s':>12} {'test img/s':>11}")
        for name, (module, dm) in tasks(tmp).items():
            train, test = run(module, dm, a.steps)
            rows[name] = {"train_images_per_s": train, "test_images_per_s": test}
            print(f"{name:<18} {train:12.2f} {test:11.2f}")
    # no reference implementation to compare with: ours = training, reference = test throughput
    table = [{"benchmark": "voc_tasks", "case": f"{k}: train vs test images/s", "ours": r["train_images_per_s"],
              "reference": r["test_images_per_s"], "unit": "images/s", "ratio": None, "target": None}
             for k, r in rows.items()]
    if a.json:
        with open(a.json, "w") as f:
            json.dump({**rows, "rows": table}, f, indent=2)


if __name__ == "__main__":
    main()
