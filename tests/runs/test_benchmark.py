"""ssl-bench benchmark: the smoke preset of the demo pipeline end to end, stage skipping on re-run
(with the skipped stages' times kept), bad methods refused before anything starts, a failed stage
recorded without stopping the rest, one run at a time per output folder, and a SIGTERM stopping it."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys

import pytest

from ssl_bench.runs.common import resolve_precision


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
    # pretraining ran in the fastest precision this CPU computes natively; the other stages in fp32
    fastest = resolve_precision("fastest", "cpu")
    for p in root.glob("*/*/results.json"):
        record = json.loads(p.read_text())
        assert record["precision"] == (fastest if record["kind"] == "pretrain" else "32-true"), p
    assert summary["ran"] == list(summary["times"]) and summary["skipped"] == []
    capsys.readouterr()
    # the same command again: every stage's results exist, nothing runs, the stage times are kept
    assert run_cli("benchmark", *SMOKE) == 0
    rerun = json.loads((root / "benchmark_summary.json").read_text())
    assert rerun["ran"] == [] and rerun["skipped"] == summary["ran"]
    assert rerun["times"] == summary["times"] and all(t > 0 for t in rerun["times"].values())
    assert capsys.readouterr().out.count("skipped") == len(ran)
    # a new stage (VOC classification with all layers) runs; the finished ones stay skipped
    assert run_cli("benchmark", *SMOKE, "voc_tasks=[voc_cls_fc6,voc_cls_all]") == 0
    again = json.loads((root / "benchmark_summary.json").read_text())
    new = {"colorization_full/voc_cls_all", "supervised/voc_cls_all", "gaussian_rgb/voc_cls_all"}
    assert set(again["ran"]) == new and set(again["times"]) == ran | new
    assert {k: again["times"][k] for k in ran} == summary["times"]
    # without the previous summary, a skipped stage's time is the wall time in its results.json
    (root / "benchmark_summary.json").unlink()
    assert run_cli("benchmark", *SMOKE) == 0
    walls = {p.parent.parent.name + "/" + p.parent.name.rsplit("-", 1)[0]: json.loads(p.read_text())["wall_time_s"]
             for p in root.glob("*/*/results.json")}
    assert json.loads((root / "benchmark_summary.json").read_text())["times"] == {k: walls[k] for k in ran}


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
    assert sum(1 for st in stages if any(o in copies for o in st.overrides)) == 25  # 9 pretrain, 13 probes, 3 colour


def test_demo_plan_has_the_split_brain_rows_and_the_fastest_precision(outputs):
    """The demo's BiGAN, autoencoder and split-brain rows, and the split-brain trunk's own Gaussian
    baseline: the same two half-width AlexNets on the same Lab input, untrained. Pretraining asks for
    the fastest precision; the probes keep fp32."""
    from hydra.utils import instantiate

    from ssl_bench.config import compose
    from ssl_bench.models.split_brain import SplitBrainAlexNet
    from ssl_bench.runs.benchmark import plan
    stages = {st.name: st for st in plan(compose("benchmark", ["preset=demo"]))}
    for method, pretext in (("bigan", "BiGANPretext"), ("autoencoder", "AutoencoderPretext"),
                            ("split_brain", "SplitBrainPretext")):
        assert stages[f"{method}/pretrain"].config.pretext._target_.endswith(pretext)
        assert f"{method}/probe_linear" in stages
    assert {st.config.precision for n, st in stages.items() if n.endswith("/pretrain")} == {"fastest"}
    assert {st.config.precision for n, st in stages.items() if "/probe_" in n} == {"32-true"}
    baseline, trained = stages["gaussian_lab/probe_linear"].config, stages["split_brain/pretrain"].config
    assert baseline.init._target_.endswith("GaussianInit") and baseline.checkpoint is None
    untrained, pretrained = instantiate(baseline.backbone), instantiate(trained.backbone)
    assert isinstance(untrained, SplitBrainAlexNet) and untrained.input_space == pretrained.input_space == "lab"
    assert {k: v.shape for k, v in untrained.state_dict().items()} == \
        {k: v.shape for k, v in pretrained.state_dict().items()}


HOLD_LOCK = """
import sys, time
from pathlib import Path
from ssl_bench.runs.benchmark import exclusive
with exclusive(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_second_benchmark_on_the_same_folder_is_refused(outputs, run_cli, capsys):
    """A benchmark running in the folder (here a process holding its lock): a second one stops at once
    with one line naming the folder, exit 2, and runs nothing; the lock goes when that process dies."""
    from ssl_bench.runs.benchmark import LOCK_NAME, exclusive
    root = outputs / "smoke"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run_cli("benchmark", *SMOKE) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(root) in err[0] and "in use by another ssl-bench benchmark" in err[0]
        assert [p.name for p in root.iterdir()] == [LOCK_NAME], "no stage ran"
    finally:
        holder.kill()
        holder.wait()
    with exclusive(root):  # a killed holder leaves the file but no lock
        fd = os.open(root / LOCK_NAME, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_sigterm_in_a_stage_stops_the_benchmark(outputs, tmp_path, capsys):
    """A pretraining stopped by SIGTERM stops the whole benchmark with its exit status: no failed.json
    (the stage is resumed by the same command, not recorded as failed), no later stage started."""
    from ssl_bench.config import compose
    from ssl_bench.runs.benchmark import exclusive, run_benchmark
    from ssl_bench.runs.pretrain import TrainingInterrupted
    started = []

    def runner(config_name, args):
        started.append(config_name)
        raise TrainingInterrupted()

    with pytest.raises(SystemExit) as e:
        run_benchmark(compose("benchmark", SMOKE), runner)
    assert e.value.code == 143 and started == ["pretrain"]
    assert not list(tmp_path.rglob("failed.json")) and not (outputs / "smoke" / "benchmark_summary.json").exists()
    assert "run the same command again to resume" in capsys.readouterr().out
    with exclusive(outputs / "smoke"):  # the lock went with the stopped run
        pass


def test_rerun_of_a_finished_benchmark_with_wandb_makes_one_run_per_stage(tmp_path, monkeypatch):
    """Stages that finished before (here without W&B) are skipped, yet each stage with a logger gets its
    W&B run, named after the stage, with its metrics and results.json: as when the stages run."""
    from report.test_wandb import contents, fake_stage, offline_runs

    from ssl_bench.report.tracking import stable_run_id
    from ssl_bench.runs.benchmark import compose, plan, run_benchmark
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("SSL_BENCH_OUTPUTS", str(tmp_path / "out"))
    base = ["preset=smoke", "methods=[gaussian_rgb]"]
    first = run_benchmark(compose("benchmark", base), fake_stage)
    assert first["ran"] and not first["failures"]
    cfg = compose("benchmark", [*base, "logger=wandb", "logger.wandb.project=rerun"])
    again = run_benchmark(cfg, fake_stage)
    assert again["ran"] == [] and sorted(again["skipped"]) == sorted(first["ran"])
    logged = [st for st in plan(cfg) if "logger" in st.config]
    assert logged, "the smoke plan has stages with a logger"
    for stage in logged:
        (run,) = offline_runs(stage.dir)
        got = contents(run)
        assert got["run"] == [stable_run_id(stage.dir)]   # the id the stage's own WandbLogger uses
        (info,) = got["info"]
        assert (info["name"], info["project"], info["group"]) == (stage.name, "rerun", "benchmark-smoke")
        record = json.loads((stage.dir / "results.json").read_text())
        summary = {k: v for s in got["summary"] for k, v in s.items()}
        assert all(summary[k] == v for k, v in record["metrics"].items())
        assert [a.type for a in got["artifact"]].count("results") == 1
