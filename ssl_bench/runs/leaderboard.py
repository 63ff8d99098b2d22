"""The leaderboard command: every ``results.json`` under some folders, tabulated beside the published numbers.

    ssl-bench leaderboard DIR... [--out DIR] [--no-published]
                          [--wandb-project P [--wandb-entity E] [--wandb-group G] [--wandb-tag T]...
                           [--wandb-mode offline|online]]

Reading the files is :mod:`ssl_bench.report.collect`, the table :mod:`ssl_bench.report.table`, the
outputs (and the W&B run with ``--wandb-project``) :mod:`ssl_bench.report.render`. Kept free of torch
and Hydra so that the command starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ssl_bench.errors import SuiteError
from ssl_bench.report.collect import RESULTS_NAME, ResultsWarning, collect
from ssl_bench.report.render import log_to_wandb, render, to_markdown
from ssl_bench.report.table import Table, build_table

PROG = "ssl-bench leaderboard"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=(
        "Tabulate every results.json under DIR (recursively) as mean ± std over seeds, beside the "
        "published numbers; writes leaderboard.md, .csv, .html and leaderboard_layers.png."))
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="folders searched for results.json")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the outputs (default: the first DIR)")
    parser.add_argument("--no-published", action="store_true", help="leave out the published rows")
    wb = parser.add_argument_group("Weights & Biases", "log the leaderboard as a W&B run of its own "
                                   "(job_type leaderboard; the same --out folder continues the same run)")
    wb.add_argument("--wandb-project", default=None, metavar="P", help="W&B project (enables W&B logging)")
    wb.add_argument("--wandb-entity", default=None, metavar="E", help="W&B entity (user or team)")
    wb.add_argument("--wandb-group", default=None, metavar="G", help="W&B run group")
    wb.add_argument("--wandb-tag", dest="wandb_tags", action="append", default=[], metavar="T",
                    help="a W&B run tag (repeat for more)")
    wb.add_argument("--wandb-mode", choices=("online", "offline"), default=None,
                    help="default: WANDB_MODE, else online unless the W&B host is unreachable (then offline)")
    return parser


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _tabulate(args: argparse.Namespace) -> Table | int:
    """The table of ``args.dirs`` with every left-out file in its warnings, or an exit status."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResultsWarning)
        try:
            records = collect(args.dirs)
        except SuiteError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 2
    skipped = [str(w.message) for w in caught if issubclass(w.category, ResultsWarning)]
    for message in skipped:
        _warn(message)
    where = ", ".join(map(str, args.dirs))
    if not records:
        why = f" ({len(skipped)} skipped, see the warnings above)" if skipped else ""
        print(f"{PROG}: no usable {RESULTS_NAME} under {where}{why}", file=sys.stderr)
        return 1
    with warnings.catch_warnings():  # printed below from table.warnings, once
        warnings.simplefilter("ignore", ResultsWarning)
        table = build_table(records, published=not args.no_published)
    for message in table.warnings:
        _warn(message)
    table.warnings[:0] = skipped
    if not table.n_measured_rows:
        print(f"{PROG}: no probe, finetune or colorization_eval results under {where} "
              f"({table.n_pretrain} pretrain run(s) found, which are not tabulated)", file=sys.stderr)
        return 1
    return table


def _log_to_wandb(args: argparse.Namespace, table: Table, paths: dict[str, Path], out_dir: Path) -> int:
    try:
        run_id = log_to_wandb(table, paths, out_dir, project=args.wandb_project,
                              entity=args.wandb_entity, group=args.wandb_group, tags=args.wandb_tags,
                              mode=args.wandb_mode, dirs=args.dirs)
    except Exception as e:  # the files are written; say what did not happen
        print(f"{PROG}: error: logging to W&B failed ({type(e).__name__}: {e})", file=sys.stderr)
        return 3
    print(f"{PROG}: logged to W&B project {args.wandb_project}, run {run_id} (job_type leaderboard)")
    return 0


def main(argv: list[str]) -> int:
    """``ssl-bench leaderboard DIR... [--out DIR] [--no-published] [--wandb-project P ...]``; returns
    the exit status.

    0: table written (and logged to W&B when asked); 1: nothing to tabulate; 2: usage error or a
    folder that does not exist; 3: table written, but logging it to W&B failed.
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help or a usage error: report as a status, do not exit the caller
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    table = _tabulate(args)
    if isinstance(table, int):
        return table
    first = Path(args.dirs[0])
    out_dir = args.out if args.out is not None else (first.parent if first.is_file() else first)
    paths = render(table, out_dir)
    print(to_markdown(table))
    for path in paths.values():
        print(f"{PROG}: wrote {path}")
    return _log_to_wandb(args, table, paths, Path(out_dir)) if args.wandb_project else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
