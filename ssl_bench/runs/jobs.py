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
    """Errors caused by the user's input: reported in one line, no traceback (SSL_BENCH_DEBUG=1 shows it).

    Only the suite's own error types (ssl_bench/errors.py) and a required config value left out: a
    plain ValueError or FileNotFoundError comes from a bug and keeps its traceback.
    """
    from omegaconf.errors import MissingMandatoryValue

    from ssl_bench.errors import SuiteError
    return (SuiteError, MissingMandatoryValue)


def root_cause(e: BaseException) -> BaseException:
    """The user's error inside Hydra's instantiation wrappers."""
    from hydra.errors import InstantiationException
    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    return e


def fail(e: BaseException | str) -> None:
    """Report a user error in one line and exit with status 2."""
    print(f"ssl-bench: error: {e}", file=sys.stderr)
    sys.exit(2)


def composition_error(e: BaseException) -> str:
    """Hydra's multi-line composition message (an unknown key or option) as one line naming the key."""
    text = str(e).split("\nConfig search path:")[0]
    if e.__cause__ is not None and str(e.__cause__):
        text += f" ({str(e.__cause__).splitlines()[0]})"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def sweep_lines(overrides: Sequence[str], limit: int = 64) -> list[list[str]] | None:
    """Override lines that together try every value of every swept key: the sweep's first job
    (``seed=0,1,2`` -> ``seed=0``), then each other value of each sweep with the rest at their first
    value (at most ``limit`` lines). Hydra's own settings (``hydra/launcher=...``, ``hydra.sweep.dir=...``)
    are left out: they are not part of the job's config. None when the line does not parse (Hydra then
    reports it itself)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in overrides if not a.startswith("-")])
    except HydraException:
        return None
    choices: list[list[str]] = []
    for o in parsed:
        line = o.input_line or ""
        if o.get_key_element().lstrip("+~").startswith("hydra"):
            continue
        key = line.split("=", 1)[0]
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [None]
        if not values:
            return None
        choices.append([line] if values == [None] else [f"{key}={v}" for v in values])
    first = [c[0] for c in choices]
    lines = [first] + [first[:i] + [v] + first[i + 1:] for i, c in enumerate(choices) for v in c[1:]]
    return lines[:limit]


def check_overrides(config: str, overrides: Sequence[str]) -> None:
    """Compose ``config`` with the command line before Hydra runs it: a misspelt key or option becomes
    a one-line ConfigError. A sweep (-m) is checked on every swept value."""
    from hydra.errors import ConfigCompositionException

    from ssl_bench.config import compose
    from ssl_bench.errors import ConfigError
    sweep = any(a in ("-m", "--multirun") for a in overrides)
    if any(a.startswith("-") for a in overrides) and not sweep:
        return  # other Hydra flags (--cfg, --help, ...) are Hydra's
    lines = sweep_lines(overrides) if sweep else [list(overrides)]
    for line in lines or []:
        try:
            compose(config, line)
        except ConfigCompositionException as e:
            raise ConfigError(composition_error(e)) from e


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

    from ssl_bench.config import CONF_DIR, validate
    job = JOBS[name]
    try:
        check_overrides(job.config, overrides)
    except Exception as e:
        if errors is not None:
            errors.append(e)
        if isinstance(e, user_errors()) and not os.environ.get("SSL_BENCH_DEBUG"):
            fail(e)
        raise

    def guarded(cfg: Any) -> Any:
        try:
            validate(cfg)
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


def run_argparse_command(parser: Any, argv: Sequence[str], body: Callable[[Any], str]) -> int:
    """The file commands (import-weights, export, prepare-weights): parse ``argv``, run ``body`` on the
    arguments and print what it returns. Returns the exit code: 0 ok, 2 a usage or user error (one line
    on stderr); ``--help`` returns 0. A missing input file counts as the user's error here."""
    try:
        a = parser.parse_args(list(argv))
    except SystemExit as e:  # usage errors (2) and --help (0) as a return code, like other commands
        return int(e.code or 0)
    from ssl_bench.errors import SuiteError
    try:
        out = body(a)
    except (SuiteError, FileNotFoundError) as e:
        print(f"ssl-bench: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0
