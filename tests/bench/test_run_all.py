"""bench/run_all.py's aggregation on fake script outputs: ratios, met / unmet, missing or failed scripts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from helpers import ROOT

BENCH = ROOT / "bench"


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("run_all", BENCH / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(**kw):
    return {"benchmark": "fake", "case": "c", "ours": 2.0, "reference": 4.0, "unit": "s", "target": None, **kw}


def write(path: Path, rows) -> Path:
    path.write_text(json.dumps({"rows": rows, "extra": {"kept": True}}))
    return path


def test_ratio_is_taken_as_given_or_computed_as_ours_over_reference(run_all, tmp_path):
    rows = run_all.collect("fake", write(tmp_path / "f.json", [row(ratio=2.0), row(), row(ratio=None),
                                                               row(reference=0.0)]), 0)
    assert [r["ratio"] for r in rows] == [2.0, 0.5, None, None]


def test_targets_met_and_unmet(run_all, tmp_path):
    rows = run_all.collect("fake", write(tmp_path / "f.json", [
        row(ratio=1.10, target="<= 1.15"), row(ratio=1.20, target="<= 1.15"),
        row(ratio=5.0, target=">= 5"), row(ratio=4.9, target=">= 5x"),
        row(ratio=None, target=">= 5"), row(ratio=3.0)]), 0)
    assert [r["met"] for r in rows] == [True, False, True, False, None, None]
    text = run_all.table(rows)
    lines = text.splitlines()
    assert lines[0] == "| benchmark | case | ours | reference | unit | ratio | target | met? |"
    assert len(lines) == 2 + 6
    assert lines[2].endswith("| 1.1 | <= 1.15 | yes |") and lines[3].endswith("| 1.2 | <= 1.15 | NO |")
    assert lines[-1].endswith("| 3 | - | - |")


def test_bad_target_is_an_error(run_all):
    with pytest.raises(ValueError, match="target"):
        run_all.parse_target("about 5")


def test_missing_failed_and_empty_scripts_are_reported_not_raised(run_all, tmp_path):
    missing = run_all.collect("data_path", tmp_path / "absent.json", "missing")
    assert len(missing) == 1 and missing[0]["problem"] and "missing" in missing[0]["case"]
    crashed = run_all.collect("probe", tmp_path / "absent.json", 1)
    assert "failed: exit status 1" in crashed[0]["case"]
    (tmp_path / "bad.json").write_text("{not json")
    assert "failed" in run_all.collect("x", tmp_path / "bad.json", 0)[0]["case"]
    assert "no rows" in run_all.collect("x", write(tmp_path / "empty.json", []), 0)[0]["case"]
    # rows written, but a non-zero exit (e.g. targets differ): the rows and a note
    noted = run_all.collect("targets", write(tmp_path / "t.json", [row(ratio=16.0, target=">= 20")]), 1)
    assert noted[0]["met"] is False and "exit status 1" in noted[1]["case"]
    assert "timed out" in run_all.collect("x", tmp_path / "absent.json", "timeout")[0]["case"]
    text = run_all.table(missing + crashed)
    assert "missing: bench/data_path.py not found" in text and text.count("\n") == 3


def test_main_runs_scripts_and_prints_one_table(run_all, tmp_path, monkeypatch, capsys):
    """main() on a fake bench folder: one script writes rows, one fails, one is absent."""
    fake = tmp_path / "bench"
    fake.mkdir()
    (fake / "good.py").write_text(
        "import json, sys\nargs = sys.argv[1:]\nquick = '--quick' in args\n"
        "path = args[args.index('--json') + 1]\n"
        "json.dump({'rows': [{'benchmark': 'good', 'case': 'quick' if quick else 'full', 'ours': 3.0,"
        " 'reference': 1.5, 'unit': 'x', 'target': '>= 1.8'}]}, open(path, 'w'))\n")
    (fake / "bad.py").write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(run_all, "BENCH", fake)
    monkeypatch.setattr(run_all, "SCRIPTS", ("good", "bad", "gone"))
    code = run_all.main(["--quick", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 1
    assert "| good | quick | 3 | 1.5 | x | 2 | >= 1.8 | yes |" in out
    assert "failed: exit status 3" in out and "missing: bench/gone.py not found" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == {"good": 0, "bad": 3, "gone": "missing"} and len(summary["rows"]) == 3
