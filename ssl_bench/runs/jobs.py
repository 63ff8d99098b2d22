"""Hydra jobs: the commands whose arguments are config overrides (so -m, sweeps and launchers work).

Each job is a config name under ``conf/`` and a run function ``cfg -> results.json record`` in its
``runs/`` module; :func:`run_hydra` runs one as a Hydra app and prints a one-line summary.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Job:
    config: str    # conf/<config>.yaml
    target: str    # "module:function" taking the composed config, returning the results record
    shown: tuple[str, ...] = ()   # metric-name endings printed in the summary line

    def run(self, cfg: Any) -> dict[str, Any]:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)(cfg)


JOBS: dict[str, Job] = {
    "pretrain": Job("pretrain", "ssl_bench.runs.pretrain:pretrain"),
    "probe_run": Job("probe_run", "ssl_bench.runs.probe:run_probe", ("/top1", "/mAP")),
    "finetune": Job("finetune", "ssl_bench.runs.finetune:finetune", ("/mAP", "/mIoU", "/mAP_area")),
    "colorization_eval": Job("colorization_eval", "ssl_bench.runs.colorization_eval:run",
                             ("color/auc_raw", "color/auc_rebal", "color/classifier_top1")),
}

JOB_ENV = "SSL_BENCH_HYDRA_JOB"
# the program as the user started it (``ssl-bench``), recorded by the CLI before Hydra rewrites argv
PROGRAM: list[str | None] = [None]


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's input: reported in one line, no traceback (SSL_BENCH_DEBUG=1 shows it)."""
    from omegaconf.errors import MissingMandatoryValue

    from ssl_bench.data.images import DataLayoutError, ImageReadError
    from ssl_bench.models.checkpoint import CheckpointMismatchError
    from ssl_bench.pretext.callbacks import CheckpointWriteError
    from ssl_bench.pretext.common import NonFiniteLossError
    # a full disk and an unreadable data file are fixed by the user, not in the code: one line each
    return (DataLayoutError, CheckpointMismatchError, NonFiniteLossError, MissingMandatoryValue,
            CheckpointWriteError, ImageReadError, FileNotFoundError, FileExistsError, ValueError)


def root_cause(e: BaseException) -> BaseException:
    """The user's error inside Hydra's instantiation wrappers."""
    from hydra.errors import InstantiationException
    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    return e


def fail(e: BaseException) -> None:
    print(f"ssl-bench: error: {e}", file=sys.stderr)
    sys.exit(2)


def summary(record: dict[str, Any], shown: tuple[str, ...]) -> str:
    """``ssl-bench: <method> [<probe|task>]: name value, ...`` for the metrics that end with ``shown``."""
    what = " ".join(str(record[k]) for k in ("method", "probe", "task") if record.get(k))
    m = record.get("metrics", {})
    picked = [(k, v) for k, v in m.items() if isinstance(v, (int, float)) and k.endswith(shown)
              and "/best/" not in k and "/holdout" not in k]
    return f"ssl-bench: {what}: " + ", ".join(f"{k} {v:.1f}" for k, v in picked)


def _say(message: str) -> None:
    """Print once per job: DDP workers other than global rank 0 stay quiet."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only
    if rank_zero_only.rank == 0:
        print(message)


def run_hydra(name: str, overrides: Sequence[str], prog: str, errors: list[BaseException] | None = None) -> None:
    """Run job ``name`` as a Hydra app on its config with ``overrides``.

    errors: when given, the job's exception is appended to it (Hydra itself reports only an exit code).
    """
    import hydra

    from ssl_bench.config import CONF_DIR
    job = JOBS[name]

    def guarded(cfg: Any) -> Any:
        try:
            record = job.run(cfg)
        except Exception as e:  # only user errors are shortened; the rest keeps its traceback
            cause = root_cause(e)
            if errors is not None:
                errors.append(cause)
            if isinstance(cause, user_errors()) and not os.environ.get("SSL_BENCH_DEBUG"):
                fail(cause)
            raise
        if job.shown:
            _say(summary(record, job.shown))
        _say(f"ssl-bench: results written to {cfg.paths.output_dir}/results.json")
        return record

    # Lightning's DDP launcher re-runs sys.argv for the other local ranks: keep the real program in
    # argv[0] and name the job in the environment, which the CLI reads back in those processes
    os.environ[JOB_ENV] = name
    sys.argv = [PROGRAM[0] or prog, *overrides]
    hydra.main(config_path=str(CONF_DIR), config_name=job.config, version_base="1.3")(guarded)()


def hydra_command(name: str, prog: str) -> Callable[[Sequence[str]], int]:
    """A CLI command that runs job ``name`` with the command line as overrides."""
    def command(argv: Sequence[str]) -> int:
        run_hydra(name, argv, prog)
        return 0
    return command
