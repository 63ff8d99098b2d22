"""The demo's pretraining stages in fp32 and in bf16 autocast, side by side in one run.

For each pretraining method of the demo preset (conf/preset/demo.yaml), with the stage's own overrides
as ``ssl-bench benchmark preset=demo`` plans them (experiment, shared decoded copy):

- default: the training step (forward, loss, backward, optimiser step, as Lightning's step times count
  it) of the method's model, ``--rounds`` rounds of ``--steps`` steps per precision, fp32 and bf16
  alternating round by round in one process, so that the machine's load hits both alike; medians.
- ``--stages``: the whole stage, ``trainer.max_epochs=--epochs``, once per precision, each its own
  ``ssl-bench pretrain`` process (``wall_time_s`` of its results.json: data preparation, init, training,
  validation). On a shared machine these move with the load by far more than the precision's effect.

    python bench/demo_precision.py [--methods colorization_full,supervised] [--rounds 4 --steps 8] [--json out.json]
    python bench/demo_precision.py --stages [--epochs 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ssl_bench.config import compose
from ssl_bench.runs.benchmark import plan

PRECISIONS = ("32-true", "bf16-mixed")


def demo_pretrain_stages(out_dir: Path, methods: list[str] | None) -> list[tuple[str, list[str]]]:
    """(method, overrides) of every pretraining stage of the demo preset, without its precision."""
    over = ["preset=demo", f"out_dir={out_dir}"] + ([f"methods=[{','.join(methods)}]"] if methods else [])
    stages = [st for st in plan(compose("benchmark", over)) if st.name.endswith("/pretrain")]
    return [(st.name.split("/")[0], [o for o in st.overrides if not o.startswith("precision=")]) for st in stages]


def run_stage(overrides: list[str], run_dir: Path) -> dict:
    """One ``ssl-bench pretrain`` process; returns its results.json record."""
    cmd = [sys.executable, "-m", "ssl_bench.cli", "pretrain", *overrides, f"hydra.run.dir={run_dir}",
           "ckpt_path=null", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((run_dir / "results.json").read_text())


def step_times(overrides: list[str], rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per training step of one demo method, per precision, fp32 and bf16 fits alternating."""
    import pytorch_lightning as pl
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from ssl_bench.config import CONF_DIR
    from ssl_bench.runs.pretrain import StepTimes, build_model
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):  # init: not timed, not the step's
        cfg = hydra_compose("pretrain", [*overrides, "init=gaussian", "data.num_workers=0"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # the paths interpolate Hydra's runtime values
    pl.seed_everything(0)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    model = build_model(cfg, dm)
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for _ in range(rounds):
        for precision in PRECISIONS:
            clock = StepTimes()
            trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps + 1, precision=precision, logger=False,
                                 enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                 num_sanity_val_steps=0, limit_val_batches=0, callbacks=[clock],
                                 use_distributed_sampler=False)
            trainer.fit(model, datamodule=dm)
            times[precision] += clock.times[1:]  # the first step of a fit carries the loader's start
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", action="store_true", help="whole stages in processes of their own")
    p.add_argument("--epochs", type=int, default=2, help="--stages: epochs per stage")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=8, help="timed steps per round and precision")
    p.add_argument("--methods", help="comma-separated demo methods (default: every pretraining method)")
    p.add_argument("--out", type=Path, default=Path("outputs") / "bench" / "demo_precision")
    p.add_argument("--json")
    a = p.parse_args(argv)
    stages = demo_pretrain_stages(a.out.resolve(), a.methods.split(",") if a.methods else None)
    print(f"load average {os.getloadavg()}")
    rows = stage_rows(stages, a) if a.stages else step_rows(stages, a)
    print(f"load average {os.getloadavg()}, {time.strftime('%Y-%m-%d')}")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows}, indent=2))
    return 0


def step_rows(stages: list[tuple[str, list[str]]], a: argparse.Namespace) -> list[dict]:
    rows = []
    for method, overrides in stages:
        t = {k: statistics.median(v) for k, v in step_times(overrides, a.rounds, a.steps).items()}
        print(f"{method:20s} step fp32 {1000 * t['32-true']:7.1f} ms  bf16 {1000 * t['bf16-mixed']:7.1f} ms  "
              f"{t['32-true'] / t['bf16-mixed']:.2f}x", flush=True)
        rows.append({"benchmark": "demo_precision", "case": f"{method} training step", "ours": t["bf16-mixed"],
                     "reference": t["32-true"], "unit": "s", "ratio": t["32-true"] / t["bf16-mixed"], "target": None})
    return rows


def stage_rows(stages: list[tuple[str, list[str]]], a: argparse.Namespace) -> list[dict]:
    rows, total = [], {k: 0.0 for k in PRECISIONS}
    for method, overrides in stages:
        wall = {}
        for precision in PRECISIONS:
            run_dir = a.out.resolve() / method / precision
            record = run_stage([*overrides, f"trainer.max_epochs={a.epochs}", f"precision={precision}"], run_dir)
            assert record["precision"] == precision, record["precision"]
            wall[precision] = record["wall_time_s"]
            total[precision] += wall[precision]
        print(f"{method:20s} fp32 {wall['32-true']:7.1f} s  bf16 {wall['bf16-mixed']:7.1f} s  "
              f"{wall['32-true'] / wall['bf16-mixed']:.2f}x", flush=True)
        rows.append({"benchmark": "demo_precision", "case": f"{method} pretrain, {a.epochs} epochs",
                     "ours": wall["bf16-mixed"], "reference": wall["32-true"], "unit": "s",
                     "ratio": wall["32-true"] / wall["bf16-mixed"], "target": None})
    print(f"{'all stages':20s} fp32 {total['32-true']:7.1f} s  bf16 {total['bf16-mixed']:7.1f} s  "
          f"{total['32-true'] / total['bf16-mixed']:.2f}x")
    return rows


if __name__ == "__main__":
    sys.exit(main())
