"""Run every benchmark script and print one table of ratios (`make bench`; `make bench-quick` = --quick).

    python bench/run_all.py [--quick] [--out outputs/bench] [--only compute probe ...] [--timeout S]

Each script runs in its own process as ``python bench/<name>.py [--quick] --json OUT/<name>.json``
(its printed output goes to OUT/<name>.log) and writes its headline comparisons as rows:

    {"rows": [{"benchmark": str, "case": str, "ours": float, "reference": float, "unit": str,
               "ratio": float, "target": str or null}]}

``ours`` and ``reference`` are the two measurements in ``unit``; ``ratio`` is the figure the target
applies to (a speed-up, a cost ratio, a fraction: each script says which), ours / reference when a
row leaves the key out, none when it is null; ``target`` is a comparison such as "<= 1.15" or ">= 5"
on the ratio, or null (reported, no target). A script that is absent, fails or writes no rows gets a row saying so and
the others go on. All rows also land in OUT/summary.json. Exit status 1 when a script is missing or
failed; unmet targets are reported, not enforced (timings depend on the machine's load).
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SCRIPTS = ("targets", "train_step", "probe", "svm_parallel", "pretexts", "voc_tasks", "data_path", "compute")
COLUMNS = ("benchmark", "case", "ours", "reference", "unit", "ratio", "target", "met?")
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def parse_target(target: str) -> tuple[str, float]:
    """"<= 1.15" -> ("<=", 1.15)."""
    t = target.strip()
    for op in ("<=", ">=", "<", ">"):  # two-character operators first
        if t.startswith(op):
            return op, float(t[len(op):].strip().rstrip("x"))
    raise ValueError(f"target {target!r}: expected '<= N', '>= N', '< N' or '> N'")


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def normalise(row: dict, benchmark: str) -> dict:
    """A row with every column: ratio filled in as ours / reference when the row leaves the key out
    (an explicit null stays: no meaningful ratio), met as True / False / None (no target or ratio)."""
    out = {"benchmark": row.get("benchmark") or benchmark, "case": str(row.get("case", "")),
           "ours": row.get("ours"), "reference": row.get("reference"), "unit": row.get("unit") or "",
           "ratio": row.get("ratio"), "target": row.get("target")}
    if "ratio" not in row:
        ours, ref = out["ours"], out["reference"]
        out["ratio"] = ours / ref if is_number(ours) and is_number(ref) and ref != 0 else None
    out["met"] = None
    if not is_number(out["ratio"]):
        out["ratio"] = None
    if out["target"] and out["ratio"] is not None:
        op, value = parse_target(out["target"])
        out["met"] = bool(_OPS[op](out["ratio"], value))
    return out


def problem_row(benchmark: str, what: str) -> dict:
    return {"benchmark": benchmark, "case": what, "ours": None, "reference": None, "unit": "",
            "ratio": None, "target": None, "met": None, "problem": True}


def collect(benchmark: str, json_path: Path, status: int | str | None) -> list[dict]:
    """The rows one script left in json_path; status: its exit code, "missing", "timeout" or None
    (not run here, the file read as it is)."""
    if status == "missing":
        return [problem_row(benchmark, f"missing: bench/{benchmark}.py not found")]
    if status == "timeout":
        return [problem_row(benchmark, "timed out (see its log)")]
    try:
        rows = json.loads(Path(json_path).read_text())["rows"]
        rows = [normalise(r, benchmark) for r in rows]
    except (OSError, ValueError, KeyError, TypeError) as e:
        why = f"exit status {status}" if status not in (None, 0) else f"no rows ({type(e).__name__}: {e})"
        return [problem_row(benchmark, f"failed: {why} (see its log)")]
    if not rows:
        return [problem_row(benchmark, "failed: wrote no rows")]
    if status not in (None, 0):
        rows.append(problem_row(benchmark, f"exit status {status} (see its log)"))
    return rows


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if is_number(v):
        return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return str(v)


def table(rows: list[dict]) -> str:
    """The one markdown table: benchmark | case | ours | reference | unit | ratio | target | met?"""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [r["benchmark"], r["case"], fmt(r["ours"]), fmt(r["reference"]), r["unit"],
                 fmt(r["ratio"]), r["target"] or "-", fmt(r["met"])]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def run_script(name: str, quick: bool, out: Path, timeout: float | None) -> int | str:
    script = BENCH / f"{name}.py"
    if not script.is_file():
        return "missing"
    (out / f"{name}.json").unlink(missing_ok=True)
    cmd = [sys.executable, str(script), *(["--quick"] if quick else []), "--json", str(out / f"{name}.json")]
    with open(out / f"{name}.log", "w") as log:
        try:
            return subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return "timeout"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="pass --quick to every script")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench", help="logs, JSON and summary.json")
    ap.add_argument("--only", nargs="+", choices=SCRIPTS, help="run these scripts only")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per script")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    rows, statuses = [], {}
    for name in a.only or SCRIPTS:
        t = time.perf_counter()
        status = statuses[name] = run_script(name, a.quick, a.out, a.timeout)
        got = collect(name, a.out / f"{name}.json", status)
        rows += got
        print(f"[run_all] {name}: {status if isinstance(status, str) else f'exit {status}'}, "
              f"{time.perf_counter() - t:.0f} s, {sum(not r.get('problem') for r in got)} rows "
              f"(log: {a.out / f'{name}.log'})", file=sys.stderr, flush=True)
    print(table(rows))
    (a.out / "summary.json").write_text(json.dumps({"quick": a.quick, "status": statuses, "rows": rows}, indent=2))
    return int(any(r.get("problem") for r in rows))


if __name__ == "__main__":
    sys.exit(main())
