"""``ssl-bench turing-test``: serve the real-vs-fake colorization study, and summarise its answers.

    ssl-bench turing-test --checkpoint CKPT --data DIR [--port 8765] [--db answers.sqlite]
                          [--trials 40] [--sentinel-fraction 0.1] [--seconds 1.0]
    ssl-bench turing-test results --db answers.sqlite [--out results.json] [--min-sentinel-accuracy 1.0]

(``key=value`` forms such as ``checkpoint=... data=...`` are accepted as well.)

The pictures are prepared once at start-up into ``<db stem>_images/`` next to the db; the server runs
until Ctrl-C / SIGTERM. ``results`` writes results.json (kind colorization_eval). The study itself
is described in :mod:`ssl_bench.colorization.study`.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssl_bench.colorization.study import UserError
from ssl_bench.colorization.study.analysis import BOOTSTRAP_DRAWS, BOOTSTRAP_SEED, summarize
from ssl_bench.colorization.study.images import DEFAULT_T
from ssl_bench.colorization.study.server import HOST, TuringServer, bind_server
from ssl_bench.colorization.study.sessions import TuringApp
from ssl_bench.colorization.study.storage import count_answers, read_answers
from ssl_bench.runs.common import key_value_flags

__all__ = ["main", "results_main"]

PROG = "ssl-bench turing-test"


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    return parser.parse_args(key_value_flags(parser, argv))


def _test_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Serve the real-vs-fake colorization test "
                                "(the paper's AMT test) on a local web page; answers go to SQLite. "
                                f"'{PROG} results --db FILE' summarises the answers.")
    p.add_argument("--checkpoint", required=True, help="colorization checkpoint (suite format)")
    p.add_argument("--data", required=True, help="folder of images (searched recursively)")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free port)")
    p.add_argument("--db", default="answers.sqlite", help="SQLite file receiving the answers")
    p.add_argument("--trials", type=int, default=40, help="trials per session (paper: 40)")
    p.add_argument("--sentinel-fraction", type=float, default=0.1, help="share of sentinel trials")
    p.add_argument("--seconds", type=float, default=1.0, help="how long the pair is shown")
    p.add_argument("--temperature", type=float, default=DEFAULT_T, help="annealed-mean T of the colorizer")
    p.add_argument("--seed", type=int, default=0, help="seed of the sentinel colours")
    p.add_argument("--verbose", action="store_true", help="log every HTTP request")
    return p


def _results_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} results", description="Summarise Turing-test answers: "
                                "% of method trials in which the colorization was labelled real.")
    p.add_argument("--db", required=True, help="SQLite file written by the server")
    p.add_argument("--out", default=None, help="results.json to write (default: next to the db)")
    p.add_argument("--min-sentinel-accuracy", type=float, default=1.0,
                   help="raters below this accuracy on sentinels are excluded (paper: 1.0)")
    p.add_argument("--method", default=None, help="method to report when the db holds several")
    return p


def _say(msg: str, file: Any = None) -> None:
    print(f"{PROG}: {msg}", file=file, flush=True)


def _error(msg: Any) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 2


# --------------------------------------------------------------------------- serving


def _bind(args: argparse.Namespace) -> TuringServer:
    """Check the paths and hold the port, before any heavy work."""
    if not Path(args.checkpoint).is_file():
        raise UserError(f"--checkpoint {args.checkpoint} does not exist")
    if not Path(args.data).is_dir():
        raise UserError(f"--data {args.data} is not a folder")
    return bind_server(args.port)


def _build_app(args: argparse.Namespace) -> TuringApp:
    """Load the colorizer, prepare the pictures beside the db and open the answer log."""
    from ssl_bench.colorization.colorize import load_colorizer, method_name
    from ssl_bench.colorization.study.images import prepare_images
    model = load_colorizer(args.checkpoint)
    db = Path(args.db)
    cache = db.with_name(db.stem + "_images")
    items = prepare_images(args.data, model, cache, T=args.temperature, seed=args.seed, log=_say)
    return TuringApp(db, items, cache, method_name(model), trials=args.trials,
                     sentinel_fraction=args.sentinel_fraction, seconds=args.seconds,
                     meta={"checkpoint": Path(args.checkpoint).resolve(), "data": Path(args.data).resolve(),
                           "temperature": args.temperature})


def _serve_until_stopped(httpd: TuringServer) -> None:
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    # both signals explicitly: a process started in the background inherits SIGINT as ignored
    signals = (signal.SIGTERM, signal.SIGINT)
    on_main = threading.current_thread() is threading.main_thread()
    old = {sig: signal.signal(sig, stop) for sig in signals} if on_main else {}
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _serve(httpd: TuringServer, app: TuringApp, args: argparse.Namespace) -> None:
    httpd.app, httpd.verbose = app, args.verbose
    _say(f"{app.method}: {len(app.items)} image(s), {args.trials} trials per session "
         f"({app.n_sentinels()} sentinels), answers -> {app.db_path}")
    _say(f"serving on http://{HOST}:{httpd.server_address[1]}/  (Ctrl-C to stop)")
    _serve_until_stopped(httpd)
    _say(f"stopped; {count_answers(app.db)} answer(s) in {app.db_path}")


def main(argv: Sequence[str]) -> int:
    """``ssl-bench turing-test ...``: serve the test until Ctrl-C / SIGTERM; ``results`` summarises."""
    argv = list(argv)
    if argv and argv[0] == "results":
        return results_main(argv[1:])
    args = _parse(_test_parser(), argv)
    from ssl_bench.errors import SuiteError
    try:
        httpd = _bind(args)
    except UserError as e:
        return _error(e)
    app = None
    try:
        try:
            app = _build_app(args)
        except SuiteError as e:
            return _error(e)
        _serve(httpd, app, args)
        return 0
    finally:
        httpd.server_close()
        if app is not None:
            app.close()


# --------------------------------------------------------------------------- results


def _pick_method(rows: Sequence[dict[str, Any]], args: argparse.Namespace) -> str:
    methods = sorted({r["method"] for r in rows})
    if not rows:
        raise UserError(f"--db {args.db} holds no answers yet")
    if args.method:
        if args.method not in methods:
            raise UserError(f"--method {args.method} not in the db (it has {', '.join(methods)})")
        return args.method
    if len(methods) > 1:
        raise UserError(f"--db {args.db} holds several methods ({', '.join(methods)}); pick one with --method")
    return methods[0]


def _results_record(s: dict[str, Any], method: str, meta: dict[str, str], args: argparse.Namespace) -> dict:
    metrics = {"color/amt_real": s["amt_real"], "color/amt_real_se": s["amt_real_se"],
               "color/amt_raters": len(s["raters_kept"]), "color/amt_raters_excluded": len(s["raters_excluded"]),
               "color/amt_trials": s["trials"], "color/amt_sentinel_trials": s["sentinel_trials"],
               "color/amt_sentinel_accuracy": s["sentinel_accuracy"]}
    return {"kind": "colorization_eval", "task": "turing_test", "method": method, "status": "completed",
            "protocol": "turing_test", "metrics": metrics,
            "dataset": {"name": "turing_test", "root": meta.get("data")},
            "checkpoint": meta.get("checkpoint"),
            "raters": {"kept": s["raters_kept"], "excluded": s["raters_excluded"]},
            "config": {"db": str(Path(args.db).resolve()), "min_sentinel_accuracy": args.min_sentinel_accuracy,
                       "bootstrap_draws": BOOTSTRAP_DRAWS, "bootstrap_seed": BOOTSTRAP_SEED,
                       "temperature": meta.get("temperature")}}


def results_main(argv: Sequence[str]) -> int:
    """``ssl-bench turing-test results --db FILE``: write results.json (kind colorization_eval)."""
    from ssl_bench.report.results import write_results
    args = _parse(_results_parser(), argv)
    try:
        if not 0.0 <= args.min_sentinel_accuracy <= 1.0:
            raise UserError(f"--min-sentinel-accuracy must be in [0, 1], got {args.min_sentinel_accuracy}")
        rows, meta = read_answers(args.db)
        method = _pick_method(rows, args)
    except UserError as e:
        return _error(e)
    s = summarize([r for r in rows if r["method"] == method], args.min_sentinel_accuracy)
    if not s["trials"]:
        print(f"{PROG} results: no rater passed the sentinel screen ({len(s['raters_excluded'])} excluded: "
              + "; ".join(f"{k}: {v}" for k, v in s["raters_excluded"].items()) + ")", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else Path(args.db).with_name("results.json")
    write_results(out, _results_record(s, method, meta, args))
    print(f"{PROG} results: {method}: {s['amt_real']:.1f}% +- {s['amt_real_se']:.1f} labelled real "
          f"({len(s['raters_kept'])} rater(s) kept, {len(s['raters_excluded'])} excluded, {s['trials']} trials)")
    print(f"{PROG} results: written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
