"""ssl-bench command line: a thin dispatcher onto Hydra jobs and a few plain commands.

    ssl-bench pretrain [hydra overrides]        pretrain a trunk (Hydra; -m for multirun)
    ssl-bench probe [hydra overrides]           per-layer probes of a frozen trunk (checkpoint=... or init=gaussian|kraehenbuehl)
    ssl-bench finetune task=voc_cls|voc_det|voc_seg checkpoint=... voc_root=...   PASCAL VOC transfer
    ssl-bench prepare-weights CHECKPOINT --out PATH [--mode ...]   absorb BN, rescale, colour branch
    ssl-bench colorize IMAGE_OR_DIR... checkpoint=CKPT [decode=annealed_mean T=0.38] [--out DIR]
    ssl-bench evaluate-colorization checkpoint=CKPT [classifier=CKPT] [data=...]   AuC raw/rebal, classifier top-1
    ssl-bench gallery --data DIR [--l2 CKPT] [--class CKPT] [--full CKPT] [--out DIR]
    ssl-bench prior-figure --data DIR | --checkpoint CKPT [--out prior.png]
    ssl-bench turing-test --checkpoint CKPT --data DIR [--port 8765]   real-vs-fake page (and: turing-test results --db F)
    ssl-bench leaderboard DIR... [--out DIR] [--wandb-project P ...]   gather results.json files into one table (and a W&B run)
    ssl-bench benchmark [preset=demo|smoke] [overrides]   pretrain -> probes -> VOC -> leaderboard, resumable
    ssl-bench demo [overrides]                  = ssl-bench benchmark preset=demo (the embedded default)
    ssl-bench data synthetic --out DIR [...]    write the synthetic ImageFolder tree
    ssl-bench data cache --root DIR --out CACHE [--split train|val|both] [--size S] [--workers N] [--overwrite]
                                                decode once into a memory-mapped uint8 cache (data.decoded_cache=CACHE)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

USAGE = __doc__


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's input: reported in one line, no traceback (SSL_BENCH_DEBUG=1 shows it)."""
    from omegaconf.errors import MissingMandatoryValue

    from ssl_bench.data.images import DataLayoutError
    from ssl_bench.models.checkpoint import CheckpointMismatchError
    from ssl_bench.pretext.common import NonFiniteLossError
    return (DataLayoutError, CheckpointMismatchError, NonFiniteLossError, MissingMandatoryValue,
            FileNotFoundError, FileExistsError, ValueError)


def _root_cause(e: BaseException) -> BaseException:
    from hydra.errors import InstantiationException
    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    return e


def _fail(e: BaseException) -> None:
    print(f"ssl-bench: error: {e}", file=sys.stderr)
    sys.exit(2)


_JOB_ENV = "SSL_BENCH_HYDRA_JOB"
_PROGRAM: list[str | None] = [None]


def run_hydra(config_name: str, task: Callable[[Any], Any], overrides: Sequence[str], prog: str,
              errors: list[BaseException] | None = None) -> None:
    """Run ``task(cfg)`` as a Hydra app (so -m, sweeps and launchers work) on conf/<config_name>.yaml.

    errors: when given, the task's exception is appended to it (Hydra itself reports only an exit code).
    """
    import hydra

    from ssl_bench.config import CONF_DIR

    def guarded(cfg: Any) -> Any:
        try:
            return task(cfg)
        except Exception as e:  # only user errors are shortened; the rest keeps its traceback
            cause = _root_cause(e)
            if errors is not None:
                errors.append(cause)
            if isinstance(cause, _user_errors()) and not os.environ.get("SSL_BENCH_DEBUG"):
                _fail(cause)
            raise

    # Lightning's DDP launcher re-runs sys.argv for the other local ranks: keep the real program in
    # argv[0] and name the job in the environment, which main() reads back in those processes
    os.environ[_JOB_ENV] = config_name
    sys.argv = [_PROGRAM[0] or prog, *overrides]
    hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(guarded)()


def _say(message: str) -> None:
    """Print once per job: DDP workers other than global rank 0 stay quiet."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only
    if rank_zero_only.rank == 0:
        print(message)


def _pretrain_task(cfg: Any) -> Any:
    from ssl_bench.runs.pretrain import pretrain
    record = pretrain(cfg)
    _say(f"ssl-bench: results written to {cfg.paths.output_dir}/results.json")
    return record


def _probe_task(cfg: Any) -> Any:
    from ssl_bench.runs.probe import run_probe
    record = run_probe(cfg)
    m = record["metrics"]
    layers = [k.split("/")[1] for k in m if k.endswith("/top1") and k.split("/")[1].startswith("conv")]
    _say("ssl-bench: " + record["method"] + " " + record["probe"] + " top-1: " +
          ", ".join(f"{l} {m[f'probe/{l}/top1']:.1f}" for l in layers))
    _say(f"ssl-bench: results written to {cfg.paths.output_dir}/results.json")
    return record


def _finetune_task(cfg: Any) -> Any:
    from ssl_bench.runs.finetune import finetune
    record = finetune(cfg)
    shown = {k: v for k, v in record["metrics"].items() if k.endswith(("/mAP", "/mIoU", "/mAP_area"))}
    _say(f"ssl-bench: {record['method']} {record['task']}: " + ", ".join(f"{k} {v:.1f}" for k, v in shown.items()))
    _say(f"ssl-bench: results written to {cfg.paths.output_dir}/results.json")
    return record


def _colorization_eval_task(cfg: Any) -> Any:
    from ssl_bench.colorization.quality import run_colorization_eval
    record = run_colorization_eval(cfg)
    m = record["metrics"]
    _say("ssl-bench: " + record["method"] + ": " + ", ".join(
        f"{k} {m[k]:.1f}" for k in ("color/auc_raw", "color/auc_rebal", "color/classifier_top1") if k in m))
    _say(f"ssl-bench: results written to {cfg.paths.output_dir}/results.json")
    return record


HYDRA_TASKS: dict[str, Callable[[Any], Any]] = {
    "pretrain": _pretrain_task, "probe_run": _probe_task, "finetune": _finetune_task,
    "colorization_eval": _colorization_eval_task}


def _benchmark(overrides: Sequence[str]) -> None:
    """``ssl-bench benchmark [overrides]``: compose conf/benchmark.yaml, then run each stage as its own
    Hydra job (pretrain, probe_run, finetune), skipping stages that already finished."""
    from hydra.errors import HydraException

    from ssl_bench.config import compose
    from ssl_bench.runs.benchmark import run_benchmark
    tasks = HYDRA_TASKS
    try:
        cfg = compose("benchmark", overrides)

        def stage(name: str, args: list[str]) -> None:
            errors: list[BaseException] = []
            try:
                run_hydra(name, tasks[name], args, f"ssl-bench {name}", errors)
            except SystemExit as e:  # Hydra turns the task's error into an exit code: name the error
                if e.code:
                    raise (errors[-1] if errors else RuntimeError(f"exit code {e.code}")) from None
        summary = run_benchmark(cfg, stage)
    except (HydraException, *_user_errors()) as e:
        if os.environ.get("SSL_BENCH_DEBUG"):
            raise
        _fail(_root_cause(e))
    if summary["failures"]:
        sys.exit(1)


def _data(argv: Sequence[str]) -> None:
    import json

    from ssl_bench.data.synthetic import SyntheticSpec, generate
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
    a = p.parse_args(argv)
    if a.cmd == "cache":
        from ssl_bench.data.datamodule import ImageDataModule
        from ssl_bench.data.decoded_cache import build_cache, native_size
        from ssl_bench.data.images import DataLayoutError
        try:
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
        except (ValueError, FileExistsError, DataLayoutError) as e:
            _fail(e)
        print(f"ssl-bench: use it with data.root={dm.root} data.decoded_cache={Path(a.out).expanduser()}"
              + (f" data.load_size={a.size}" if a.size else " data.load_size=null"))
        return
    spec = SyntheticSpec(num_classes=a.classes, train_per_class=a.train_per_class,
                         val_per_class=a.val_per_class, image_size=a.size, seed=a.seed,
                         image_format=a.format)
    try:
        out = generate(a.out, spec, workers=a.workers, overwrite=a.overwrite, progress=True)
    except (ValueError, FileExistsError) as e:
        _fail(e)
    print(f"ssl-bench: synthetic data in {out}")


def main(argv: Sequence[str] | None = None) -> None:
    if argv is None:
        _PROGRAM[0] = sys.argv[0]
    argv = list(sys.argv[1:] if argv is None else argv)
    job = os.environ.get(_JOB_ENV)
    if job in HYDRA_TASKS and os.environ.get("LOCAL_RANK") and (not argv or "=" in argv[0]):
        # a DDP worker started by Lightning with the parent's overrides only (see run_hydra)
        run_hydra(job, HYDRA_TASKS[job], argv, f"ssl-bench {job}")
        return
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    cmd, rest = argv[0], argv[1:]
    if cmd == "pretrain":
        run_hydra("pretrain", _pretrain_task, rest, "ssl-bench pretrain")
    elif cmd == "probe":
        run_hydra("probe_run", _probe_task, rest, "ssl-bench probe")
    elif cmd == "finetune":
        run_hydra("finetune", _finetune_task, rest, "ssl-bench finetune")
    elif cmd == "prepare-weights":
        from ssl_bench.models.transfer import prepare_weights_main
        sys.exit(prepare_weights_main(rest))
    elif cmd == "turing-test":
        from ssl_bench.colorization.study import turing_test_main
        sys.exit(turing_test_main(rest))
    elif cmd == "gallery":
        from ssl_bench.colorization.gallery import gallery_main
        sys.exit(gallery_main(rest))
    elif cmd == "prior-figure":
        from ssl_bench.colorization.gallery import prior_figure_main
        sys.exit(prior_figure_main(rest))
    elif cmd == "colorize":
        from ssl_bench.colorization.colorize import colorize_main
        sys.exit(colorize_main(rest))
    elif cmd == "evaluate-colorization":
        run_hydra("colorization_eval", _colorization_eval_task, rest, "ssl-bench evaluate-colorization")
    elif cmd == "leaderboard":
        from ssl_bench.report.leaderboard import leaderboard_main
        sys.exit(leaderboard_main(rest))
    elif cmd in ("benchmark", "demo"):
        _benchmark(rest)
    elif cmd == "data":
        _data(rest)
    else:
        print(f"ssl-bench: unknown command {cmd!r}\n{USAGE}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
