"""ssl-bench command line: a thin dispatcher onto Hydra jobs and a few plain commands.

    ssl-bench pretrain [hydra overrides]        pretrain a trunk (Hydra; -m for multirun)
    ssl-bench probe [hydra overrides]           per-layer probes of a frozen trunk
                                                (checkpoint=... or init=gaussian|kraehenbuehl)
    ssl-bench finetune task=voc_cls|voc_det|voc_seg checkpoint=... voc_root=...   PASCAL VOC transfer
    ssl-bench prepare-weights CHECKPOINT --out PATH [--mode ...]   absorb BN, rescale, colour branch
    ssl-bench import-weights caffe|caffe2-pkl|vissl|state-dict ... --out CKPT   other frameworks' weights
    ssl-bench export CKPT --format state-dict --out DIR   a plain PyTorch state dict and a model card
    ssl-bench colorize IMAGE_OR_DIR... checkpoint=CKPT [decode=annealed_mean T=0.38] [--out DIR]
    ssl-bench evaluate-colorization checkpoint=CKPT [classifier=CKPT] [data=...]   AuC raw/rebal, classifier top-1
    ssl-bench gallery --data DIR [--l2 CKPT] [--class CKPT] [--full CKPT] [--out DIR]
    ssl-bench prior-figure --data DIR | --checkpoint CKPT [--out prior.png]
    ssl-bench turing-test --checkpoint CKPT --data DIR [--port 8765]   real-vs-fake page
                                                (and: turing-test results --db F)
    ssl-bench leaderboard DIR... [--out DIR] [--wandb-project P ...]   gather results.json files into one table
                                                (and a W&B run)
    ssl-bench benchmark [preset=demo|smoke] [overrides]   pretrain -> probes -> VOC -> leaderboard, resumable
    ssl-bench demo [overrides]                  = ssl-bench benchmark preset=demo (the embedded default)
    ssl-bench data synthetic --out DIR [...]    write the synthetic ImageFolder tree
    ssl-bench data cache --root DIR --out CACHE [--split train|val|both] [--size S] [--workers N] [--overwrite]
                                                decode once into a memory-mapped uint8 cache (data.decoded_cache=CACHE)
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence

from ssl_bench.runs.jobs import JOB_ENV, JOBS, PROGRAM, fail, hydra_command, run_hydra, user_errors

USAGE = __doc__

# command -> (module, function) of a ``main(argv) -> int``; imported only when the command runs
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare-weights": ("ssl_bench.runs.prepare_weights", "main"),
    "import-weights": ("ssl_bench.runs.import_weights", "main"),
    "export": ("ssl_bench.runs.export", "main"),
    "colorize": ("ssl_bench.runs.colorize", "main"),
    "gallery": ("ssl_bench.runs.gallery", "main"),
    "prior-figure": ("ssl_bench.runs.prior_figure", "main"),
    "turing-test": ("ssl_bench.runs.turing_test", "main"),
    "leaderboard": ("ssl_bench.runs.leaderboard", "main"),
    "benchmark": ("ssl_bench.runs.benchmark", "main"),
    "demo": ("ssl_bench.runs.benchmark", "main"),
    "data": ("ssl_bench.runs.data", "main"),
}
# command -> Hydra job (runs/jobs.py): its arguments are config overrides
HYDRA_COMMANDS: dict[str, str] = {"pretrain": "pretrain", "probe": "probe_run", "finetune": "finetune",
                                  "evaluate-colorization": "colorization_eval"}


def command(name: str) -> Callable[[Sequence[str]], int] | None:
    """The function that runs command ``name``, or None for an unknown command."""
    if name in HYDRA_COMMANDS:
        return hydra_command(HYDRA_COMMANDS[name], f"ssl-bench {name}")
    if name in COMMANDS:
        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)
    return None


def main(argv: Sequence[str] | None = None) -> None:
    if argv is None:
        PROGRAM[0] = sys.argv[0]
    argv = list(sys.argv[1:] if argv is None else argv)
    job = os.environ.get(JOB_ENV)
    if job in JOBS and os.environ.get("LOCAL_RANK") and (not argv or "=" in argv[0]):
        # a DDP worker started by Lightning with the parent's overrides only (see run_hydra)
        run_hydra(job, argv, f"ssl-bench {job}")
        return
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    run = command(argv[0])
    if run is None:
        print(f"ssl-bench: unknown command {argv[0]!r}\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    try:
        code = run(argv[1:])
    except user_errors() as e:  # the suite's own errors only: anything else is a bug and keeps its traceback
        if os.environ.get("SSL_BENCH_DEBUG"):
            raise
        fail(e)
    sys.exit(code)


if __name__ == "__main__":
    main()
