"""ssl-bench benchmark: the smoke preset of the demo pipeline end to end, stage skipping on re-run,
bad methods refused before anything starts, and a failed stage recorded without stopping the rest."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_BENCH_OUTPUTS", str(tmp_path / "out"))
    monkeypatch.setenv("SSL_BENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "out" / "benchmark"


SMOKE = ["preset=smoke", "methods=[colorization_full,supervised,gaussian_rgb]"]


def test_smoke_pipeline_runs_every_stage_then_skips_them(outputs, run_cli, capsys):
    assert run_cli("benchmark", *SMOKE) == 0
    root = outputs / "smoke"
    summary = json.loads((root / "benchmark_summary.json").read_text())
    assert not summary["failures"]
    ran = set(summary["times"])
    assert {"colorization_full/pretrain", "colorization_full/probe_linear", "colorization_full/voc_cls_fc6",
            "supervised/pretrain", "gaussian_rgb/probe_linear", "gaussian_rgb/voc_cls_fc6",
            "colorization_full/colorization_eval"} <= ran
    for f in ("leaderboard.md", "leaderboard.csv", "leaderboard.html", "leaderboard_layers.png"):
        assert (root / f).is_file()
    table = (root / "leaderboard.md").read_text()
    assert "colorization/full" in table and "gaussian/rgb" in table and "Cls fc6-8" in table
    assert "AuC raw" in table  # colorization quality, with the benchmark's supervised trunk as classifier
    evals = list(root.glob("colorization_full/colorization_eval-*/results.json"))
    assert evals and "color/classifier_top1" in json.loads(evals[0].read_text())["metrics"]
    # one decoded copy of the data set, read by every image stage (no stage decodes the JPEGs again)
    (decoded,) = (root / "decoded").iterdir()
    assert json.loads((decoded / "train" / "meta.json").read_text())["n"] > 0
    image_stages = [p for p in root.glob("*/*/results.json") if "voc_" not in p.parent.name]
    assert len(image_stages) >= 6
    for p in image_stages:
        assert json.loads(p.read_text())["config"]["data"]["decoded_cache"] == str(decoded), p
    capsys.readouterr()
    # the same command again: every stage's results exist, nothing runs
    assert run_cli("benchmark", *SMOKE) == 0
    assert json.loads((root / "benchmark_summary.json").read_text())["times"] == {}
    assert capsys.readouterr().out.count("skipped") == len(ran)
    # a new stage (VOC classification with all layers) runs; the finished ones stay skipped
    assert run_cli("benchmark", *SMOKE, "voc_tasks=[voc_cls_fc6,voc_cls_all]") == 0
    again = set(json.loads((root / "benchmark_summary.json").read_text())["times"])
    assert again == {"colorization_full/voc_cls_all", "supervised/voc_cls_all", "gaussian_rgb/voc_cls_all"}


def test_unknown_method_is_refused_before_anything_runs(outputs, run_cli, capsys):
    assert run_cli("benchmark", "preset=smoke", "methods=[colorization_full,jigsaw]") == 2
    err = capsys.readouterr().err
    assert "jigsaw" in err and "context_prediction" in err  # the valid ones are listed
    assert not outputs.exists()


def test_failed_stage_is_recorded_and_the_rest_goes_on(outputs, run_cli, tmp_path):
    broken = "+method_presets.broken={kind:pretrain,overrides:['pretext=supervised','data.layout=nowhere']}"
    assert run_cli("benchmark", "preset=smoke", "methods=[broken,gaussian_rgb]", "voc_tasks=[]", broken) == 1
    root = outputs / "smoke"
    summary = json.loads((root / "benchmark_summary.json").read_text())
    assert "broken/pretrain" in summary["failures"] and "nowhere" in summary["failures"]["broken/pretrain"]
    assert summary["failures"]["broken/probe_linear"].startswith("not run")
    assert "gaussian_rgb/probe_linear" in summary["times"]
    failed = list(root.glob("broken/pretrain-*/failed.json"))
    assert failed and "nowhere" in json.loads(failed[0].read_text())["reason"]
    # the leaderboard renders what ran and lists the missing stage with its reason
    table = (root / "leaderboard.md").read_text()
    assert "gaussian/rgb" in table and "broken/pretrain failed" in table and "nowhere" in table


def test_demo_plan_shares_one_decoded_copy(outputs):
    """Every image stage of the demo (context prediction crops 64 px, the others 56) reads the same
    decoded copy: the crop is taken at read time, so it is not part of the copy's key."""
    from ssl_bench.config import compose
    from ssl_bench.runs.benchmark import plan
    stages = plan(compose("benchmark", ["preset=demo"]))
    copies = {o for st in stages for o in st.overrides if o.startswith("data.decoded_cache=")}
    crops = {st.config.data.crop_size for st in stages if "data" in st.config and "crop_size" in st.config.data}
    assert len(copies) == 1 and crops == {56, 64}
    assert sum(1 for st in stages if any(o in copies for o in st.overrides)) == 18  # 6 pretrain, 9 probes, 3 colour
