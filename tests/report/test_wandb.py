"""W&B logging, read back from an offline run's own files: metrics, a table, an image, the results
artifact, the resolved config, and a run id that stays the same when the same run is started again;
the leaderboard as a W&B run of its own (ssl-bench leaderboard --wandb-project, ssl-bench benchmark
logger=wandb); offline mode chosen when the W&B host cannot be reached (the probe is always patched:
these tests make no network connection)."""

from __future__ import annotations

import csv
import json
import socket
import struct
import time
from pathlib import Path

import pytest
from helpers import tiny_overrides

from ssl_bench.report import tracking
from ssl_bench.report.tracking import layer_rows, wandb_run_kwargs

WANDB_LOGGER = {"_target_": "pytorch_lightning.loggers.WandbLogger", "id": None}

BLOCK, HEADER = 32768, 7  # the .wandb file: a LevelDB-style log of wandb_internal_pb2.Record


def read_wandb_records(path: Path) -> list:
    """Every Record in a ``run-*.wandb`` file (wandb >= 0.18 ships no Python reader for it)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B data file"
    pos, buf, out = HEADER, b"", []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk, pos = data[pos + HEADER:pos + HEADER + length], pos + HEADER + length
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL / FIRST start a record
        if kind in (1, 4):  # FULL / LAST end one
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


def offline_runs(out: Path) -> list[Path]:
    return sorted((out / "wandb").glob("offline-run-*"))


def items(update) -> dict[str, object]:
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in update}


def contents(run_dir: Path) -> dict[str, list]:
    """Records of one offline run, by type: history / summary dicts, artifacts, config keys, run ids."""
    (data,) = run_dir.glob("run-*.wandb")
    got: dict[str, list] = {"history": [], "summary": [], "artifact": [], "config": [], "run": [], "info": []}
    # wandb's writer may still be flushing after finish() returned (seen under load: records missing
    # from a run read at once): wait for the run's exit record before reading
    deadline = time.monotonic() + 60
    while True:
        try:
            records = read_wandb_records(data)
        except Exception:  # a record half written
            if time.monotonic() > deadline:
                raise
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "history":
            got["history"].append(items(r.history.item))
        elif kind == "summary":
            got["summary"].append(items(r.summary.update))
        elif kind == "artifact":
            got["artifact"].append(r.artifact)
        elif kind == "config":
            got["config"] += [i.key for i in r.config.update]
        elif kind == "run":
            got["run"].append(r.run.run_id)
            got["info"].append({"project": r.run.project, "group": r.run.run_group, "tags": list(r.run.tags),
                                "name": r.run.display_name, "job_type": r.run.job_type})
    return got


def probe_args(data: Path, out: Path) -> list[str]:
    return ["probe", "init=gaussian", "logger=wandb", "backbone.in_channels=3", "backbone.input_space=rgb",
            "probe.epochs=1", "probe.layers=[conv1,conv2]", f"data.root={data}", "data.synthetic=null",
            "data.num_workers=0", f"paths.cache_dir={out.parent}/cache", f"hydra.run.dir={out}",
            "probe.batch_size=32", "trainer.enable_progress_bar=false",
            "backbone.widths=[16,32,48,48,32]", "backbone.fc_channels=64"]


def test_run_id_is_stable_per_output_dir(tmp_path):
    c = {"_target_": "pytorch_lightning.loggers.WandbLogger", "id": None}
    a, b = wandb_run_kwargs(c, tmp_path / "a"), wandb_run_kwargs(c, tmp_path / "b")
    assert a == wandb_run_kwargs(c, tmp_path / "a") and a["id"] != b["id"] and a["resume"] == "allow"
    assert wandb_run_kwargs({**c, "id": "mine"}, tmp_path) == {}  # an explicit id wins
    assert wandb_run_kwargs({"_target_": "pytorch_lightning.loggers.CSVLogger"}, tmp_path) == {}
    assert layer_rows({"probe/conv1/top1": 1.0, "probe/conv1/top5": 2.0, "probe/best/top1": 1.0,
                       "probe/test/conv1@0.1/top1": 3.0}) == [["conv1", 1.0, 2.0]]


@pytest.mark.slow
def test_probe_run_has_metrics_table_config_and_results_artifact(tiny_data, tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    out = tmp_path / "probe"
    assert run_cli(*probe_args(tiny_data, out)) == 0
    res = json.loads((out / "results.json").read_text())
    (run,) = offline_runs(out)
    got = contents(run)
    summary = {k: v for s in got["summary"] for k, v in s.items()}
    for layer in ("conv1", "conv2"):  # namespaced metrics (history rows, and the run summary), = results.json
        key = f"probe/{layer}/top1"
        # the summary is written at finish; a history row can arrive late under load (seen twice)
        logged = [h[key] for h in got["history"] if key in h] + ([summary[key]] if key in summary else [])
        assert logged and logged[-1] == pytest.approx(res["metrics"][key])
    assert summary["probe/best/top1"] == pytest.approx(res["metrics"]["probe/best/top1"])
    assert summary["probe/layers/_type"] == "table-file"  # the per-layer table
    (table_file,) = (run / "files").glob("media/table/**/*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["layer", "top1", "top5"]
    assert [r[0] for r in table["data"]] == ["conv1", "conv2"]
    assert table["data"][0][1] == pytest.approx(res["metrics"]["probe/conv1/top1"])
    assert {"probe", "data", "backbone", "init"} <= set(got["config"])  # the resolved config
    results = [a for a in got["artifact"] if a.type == "results"]
    assert len(results) == 1 and results[0].name == f"results-{got['run'][0]}"
    assert [m.path for m in results[0].manifest.contents] == ["results.json"]


@pytest.mark.slow
def test_pretrain_run_has_an_image_panel_and_resumes_the_same_run(tiny_data, tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    out = tmp_path / "run"
    args = ["pretrain", *tiny_overrides(tiny_data, out, tmp_path / "cache"), "logger=wandb"]
    assert run_cli(*args) == 0
    (first,) = offline_runs(out)
    got = contents(first)
    images = [h for h in got["history"] if "pretrain/samples/_type" in h]  # nested values arrive flattened
    assert images and images[0]["pretrain/samples/_type"] == "images/separated"
    assert list((first / "files" / "media" / "images").glob("pretrain/samples_*.png"))
    assert any("pretrain/loss" in h for h in got["history"])
    assert any(a.type == "results" for a in got["artifact"])
    run_id = got["run"][0]
    assert first.name.endswith(f"-{run_id}")

    assert run_cli(*args) == 0  # the same command again: the same W&B run continues
    runs = offline_runs(out)
    # wandb may suffix the folder ("-1") when both runs start within the same second; the id is what counts
    assert len(runs) == 2 and all(f"-{run_id}" in r.name for r in runs)
    assert all(contents(r)["run"] == [run_id] for r in runs)


# ------------------------------------------------------------------------------------------------
# offline when the W&B host cannot be reached


class Probe:
    """Stands in for tracking.tcp_reachable: records its calls, answers ``reachable``."""

    def __init__(self, reachable: bool) -> None:
        self.reachable, self.calls = reachable, []

    def __call__(self, host: str, port: int, timeout: float) -> bool:
        self.calls.append((host, port, timeout))
        return self.reachable


@pytest.fixture
def no_mode(monkeypatch):
    """WANDB_MODE unset (monkeypatch restores it, and undoes what the code under test sets)."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    return monkeypatch


def test_unreachable_host_switches_to_offline_and_says_so(no_mode, tmp_path, capsys):
    probe = Probe(False)
    no_mode.setattr(tracking, "tcp_reachable", probe)
    no_mode.setenv("WANDB_BASE_URL", "http://wandb.example.internal:8080")
    kwargs = wandb_run_kwargs({**WANDB_LOGGER, "save_dir": str(tmp_path)}, tmp_path)
    assert kwargs["id"] and kwargs["resume"] == "allow"  # the stable id as before
    assert probe.calls == [("wandb.example.internal", 8080, tracking.PROBE_TIMEOUT_S)]
    assert tracking.PROBE_TIMEOUT_S <= 3
    assert tracking.os.environ["WANDB_MODE"] == "offline"
    (line,) = capsys.readouterr().out.strip().splitlines()  # one line
    assert "wandb.example.internal:8080" in line and "offline" in line
    assert f"wandb sync {tmp_path / 'wandb'}/offline-run-*" in line
    wandb_run_kwargs(WANDB_LOGGER, tmp_path)  # the next run of the process: offline already, no probe
    assert len(probe.calls) == 1 and capsys.readouterr().out == ""


def test_reachable_host_leaves_the_mode_alone(no_mode, tmp_path, capsys):
    probe = Probe(True)
    no_mode.setattr(tracking, "tcp_reachable", probe)
    wandb_run_kwargs(WANDB_LOGGER, tmp_path)
    assert probe.calls == [("api.wandb.ai", 443, tracking.PROBE_TIMEOUT_S)]  # the default host
    assert "WANDB_MODE" not in tracking.os.environ
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("mode", ["offline", "online", "disabled"])
def test_a_set_wandb_mode_is_not_probed(no_mode, tmp_path, mode):
    def probe(*a):
        raise AssertionError("probed although WANDB_MODE is set")
    no_mode.setattr(tracking, "tcp_reachable", probe)
    no_mode.setenv("WANDB_MODE", mode)
    wandb_run_kwargs(WANDB_LOGGER, tmp_path)
    assert tracking.os.environ["WANDB_MODE"] == mode


def test_offline_configs_and_other_loggers_are_not_probed(no_mode, tmp_path):
    def probe(*a):
        raise AssertionError("probed for a run that is offline anyway")
    no_mode.setattr(tracking, "tcp_reachable", probe)
    wandb_run_kwargs({**WANDB_LOGGER, "offline": True}, tmp_path)
    wandb_run_kwargs({"_target_": "pytorch_lightning.loggers.CSVLogger"}, tmp_path)
    assert "WANDB_MODE" not in tracking.os.environ


def test_wandb_host_and_the_tcp_probe_on_loopback(no_mode):
    assert tracking.wandb_host() == ("api.wandb.ai", 443)
    no_mode.setenv("WANDB_BASE_URL", "https://wandb.corp.example")
    assert tracking.wandb_host() == ("wandb.corp.example", 443)
    no_mode.setenv("WANDB_BASE_URL", "http://localhost:8080/")
    assert tracking.wandb_host() == ("localhost", 8080)
    with socket.socket() as server:  # loopback only: a listening port, then a closed one
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert tracking.tcp_reachable("127.0.0.1", port, 1.0)
    assert not tracking.tcp_reachable("127.0.0.1", port, 1.0)
    hang = __import__("threading").Event()
    no_mode.setattr(socket, "getaddrinfo", lambda *a, **k: hang.wait(10) and [])  # a resolver that hangs
    start = time.monotonic()
    assert not tracking.tcp_reachable("api.wandb.ai", 443, 0.3)
    assert time.monotonic() - start < 2  # the timeout bounds the lookup too
    hang.set()


# ------------------------------------------------------------------------------------------------
# the leaderboard as a W&B run


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def wandb_table(run_dir: Path, key: str) -> dict:
    """A logged table, found through the run's summary record (its file path), as {columns, data}."""
    summary = {k: v for s in contents(run_dir)["summary"] for k, v in s.items()}
    assert summary[f"{key}/_type"] == "table-file", sorted(summary)
    return json.loads((run_dir / "files" / summary[f"{key}/path"]).read_text())


def same(csv_value: str, logged) -> bool:
    if csv_value == "":
        return logged in (None, "")
    if isinstance(logged, (int, float)):
        return float(csv_value) == pytest.approx(logged)
    return csv_value == str(logged)


def assert_table_matches_csv(table: dict, csv_lines: list[dict[str, str]]) -> None:
    """Every row of the W&B table equals the CSV's row of that section, column by column."""
    assert len(table["data"]) == len(csv_lines) > 0
    shared = [c for c in table["columns"] if c in csv_lines[0]]
    assert {"method", "source", "data"} <= set(shared) and len(shared) >= 10
    for logged, line in zip(table["data"], csv_lines):
        got = dict(zip(table["columns"], logged))
        for col in shared:
            assert same(line[col], got[col]), (col, line[col], got[col])


def assert_leaderboard_run(out: Path, sections: dict[str, list[dict[str, str]]]) -> dict:
    """The one leaderboard run under out/wandb: tables = the CSV's sections, the plot, the files."""
    (run,) = offline_runs(out)
    got = contents(run)
    for key, lines in sections.items():
        assert_table_matches_csv(wandb_table(run, key), lines)
    summary = {k: v for s in got["summary"] for k, v in s.items()}
    assert summary["leaderboard/layers/_type"] == "image-file"
    (png,) = (run / "files").glob("media/images/leaderboard/layers_*.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (art,) = [a for a in got["artifact"] if a.type == "leaderboard"]
    assert {m.path for m in art.manifest.contents} >= {"leaderboard.md", "leaderboard.csv"}
    assert art.name == f"leaderboard-{got['run'][0]}"
    (info,) = got["info"]
    assert info["job_type"] == "leaderboard"
    return {"run": run, "id": got["run"][0], **info}


def results_tree(root: Path) -> None:
    """Probe (two seeds, linear; one kNN), VOC and colorization results of two methods."""
    def write(sub: str, record: dict) -> None:
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / "results.json").write_text(json.dumps(
            {"schema_version": 1, "status": "completed", "dataset": {"name": "synth4"}, **record}))
    for seed in (0, 1):
        for method, base in (("colorization/full", 20.0), ("gaussian/rgb", 10.0)):
            write(f"{method}/probe{seed}", {"kind": "probe", "probe": "linear", "method": method, "seed": seed,
                                            "metrics": {f"probe/conv{i}/top1": base + i + seed for i in range(1, 6)}})
    write("gauss_knn", {"kind": "probe", "probe": "knn", "method": "gaussian/rgb", "seed": 0,
                        "metrics": {"probe/conv5/top1": 9.5}})
    write("voc", {"kind": "finetune", "method": "colorization/full", "task": "voc_cls_fc6", "seed": 0,
                  "metrics": {"voc07/cls_fc6/mAP": 41.5}})
    write("color", {"kind": "colorization_eval", "method": "colorization/full", "seed": 0,
                    "metrics": {"color/auc_raw": 88.0, "color/auc_rebal": 61.0}})


def by_section(lines: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    keys = {"svm": "voc07_svm", "voc": "voc", "color": "colorization"}
    out: dict[str, list[dict[str, str]]] = {}
    for line in lines:
        key = f"{line['probe']}_probe" if line["section"] == "probes" else keys[line["section"]]
        out.setdefault(f"leaderboard/{key}", []).append(line)
    return out


def test_leaderboard_command_logs_a_wandb_run_without_network(no_mode, tmp_path, run_cli, capsys):
    probe = Probe(False)  # no network: the command must go offline by itself
    no_mode.setattr(tracking, "tcp_reachable", probe)
    no_mode.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # should anything slip through: loopback only
    no_mode.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    root = tmp_path / "results"
    results_tree(root)
    args = ["leaderboard", str(root), "--wandb-project", "lb_test", "--wandb-tag", "smoke"]
    assert run_cli(*args) == 0
    assert len(probe.calls) == 1 and tracking.os.environ["WANDB_MODE"] == "offline"
    out = capsys.readouterr().out
    assert "not reachable" in out and "wandb sync" in out and "job_type leaderboard" in out
    lines = csv_rows(root / "leaderboard.csv")
    sections = by_section(lines)
    assert {"leaderboard/linear_probe", "leaderboard/knn_probe", "leaderboard/voc",
            "leaderboard/colorization"} == set(sections)
    first = assert_leaderboard_run(root, sections)
    assert first["project"] == "lb_test" and first["tags"] == ["smoke"]
    table = wandb_table(first["run"], "leaderboard/linear_probe")
    source = table["columns"].index("source")
    measured = [dict(zip(table["columns"], r)) for r in table["data"] if r[source] == "measured"]
    assert [(m["method"], m["n_runs"], m["best_layer"]) for m in measured] == [
        ("colorization/full", 2, "conv5"), ("gaussian/rgb", 2, "conv5")]
    assert measured[0]["conv3_mean"] == pytest.approx(23.5) and measured[0]["conv3_n"] == 2
    assert any(r[table["columns"].index("source")] == "published" for r in table["data"])

    assert run_cli(*args) == 0  # the same folder again: the same W&B run continues
    runs = offline_runs(root)
    assert len(runs) == 2 and all(contents(r)["run"] == [first["id"]] for r in runs)


def test_leaderboard_wandb_mode_flag_and_failure_status(tmp_path, run_cli, monkeypatch, capsys):
    def probe(*a):
        raise AssertionError("probed although --wandb-mode was given")
    monkeypatch.setattr(tracking, "tcp_reachable", probe)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    root = tmp_path / "results"
    results_tree(root)
    assert run_cli("leaderboard", str(root), "--wandb-project", "p", "--wandb-mode", "offline") == 0
    assert len(offline_runs(root)) == 1
    assert run_cli("leaderboard", str(root), "--wandb-project", "p", "--wandb-mode", "sideways") == 2

    def broken(*a, **k):
        raise RuntimeError("no W&B today")
    monkeypatch.setattr(tracking, "leaderboard_run", broken)
    capsys.readouterr()
    assert run_cli("leaderboard", str(root), "--wandb-project", "p") == 3  # files written, W&B failed
    assert "no W&B today" in capsys.readouterr().err and (root / "leaderboard.csv").is_file()


def fake_stage(config_name: str, args: list[str]) -> None:
    """A benchmark stage that composes its real config with the overrides it is given (so they must be
    valid), records its logger settings, and writes a results.json instead of training."""
    from omegaconf import OmegaConf

    from ssl_bench.runs.benchmark import compose
    cfg = compose(config_name, args)
    out = Path(next(a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")))
    out.mkdir(parents=True, exist_ok=True)
    method = out.parent.name
    logger = (OmegaConf.to_container(cfg.logger.wandb, resolve=False)
              if "logger" in cfg and "wandb" in cfg.logger else None)
    (out / "logger.json").write_text(json.dumps(logger, default=str))
    kinds = {"pretrain": {"kind": "pretrain", "metrics": {}},
             "probe_run": {"kind": "probe", "probe": "linear",
                           "metrics": {f"probe/conv{i}/top1": 10.0 * i + len(method) for i in range(1, 6)}},
             "finetune": {"kind": "finetune", "task": "voc_cls_fc6",
                          "metrics": {"voc07/cls_fc6/mAP": 30.0 + len(method)}},
             "colorization_eval": {"kind": "colorization_eval", "metrics": {"color/auc_raw": 80.0}}}
    (out / "results.json").write_text(json.dumps({"schema_version": 1, "status": "completed", "seed": 0,
                                                  "method": method, "dataset": {"name": "synth"},
                                                  **kinds[config_name]}))


def test_benchmark_with_wandb_logger_logs_stages_and_the_leaderboard(tmp_path, monkeypatch, capsys):
    from ssl_bench.runs.benchmark import compose, run_benchmark
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("SSL_BENCH_OUTPUTS", str(tmp_path / "out"))
    cfg = compose("benchmark", ["preset=smoke", "methods=[colorization_full,gaussian_rgb]", "logger=wandb",
                                "logger.wandb.project=bench_test", "logger.wandb.tags=[smoke,'a b']"])
    summary = run_benchmark(cfg, fake_stage)
    assert not summary["failures"]
    out = Path(summary["out_dir"])
    loggers = {p.parent.name.split("-")[0] + "@" + p.parent.parent.name: json.loads(p.read_text())
               for p in out.glob("*/*/logger.json")}
    assert loggers["colorization_eval@colorization_full"] is None  # that stage has no logger
    stage_loggers = {k: v for k, v in loggers.items() if v is not None}
    assert {"pretrain@colorization_full", "probe_linear@gaussian_rgb", "voc_cls_fc6@gaussian_rgb"} <= set(stage_loggers)
    for name, logger in stage_loggers.items():
        stage, method = name.split("@")
        assert logger["_target_"].endswith("WandbLogger") and logger["project"] == "bench_test"
        assert logger["group"] == "benchmark-smoke" and logger["tags"] == ["smoke", "a b"]
        assert logger["name"] == f"{method}/{stage}"
    run = assert_leaderboard_run(out, by_section(csv_rows(out / "leaderboard.csv")))
    assert (run["project"], run["group"], run["tags"]) == ("bench_test", "benchmark-smoke", ["smoke", "a b"])
    assert {"leaderboard/linear_probe", "leaderboard/voc", "leaderboard/colorization"} <= {
        k.rsplit("/_type", 1)[0] for s in contents(run["run"])["summary"] for k in s if k.endswith("/_type")}
    # switching the logger back reruns nothing: the logger is not part of a stage's hash
    again = run_benchmark(compose("benchmark", ["preset=smoke", "methods=[colorization_full,gaussian_rgb]"]),
                          fake_stage)
    assert again["ran"] == []


@pytest.mark.slow
def test_smoke_benchmark_with_wandb_logger_end_to_end(tmp_path, run_cli, monkeypatch):
    """The real smoke pipeline (one untrained method, a probe and a VOC task) with logger=wandb, offline."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var, sub in (("SSL_BENCH_OUTPUTS", "out"), ("SSL_BENCH_DATA", "data"), ("SSL_BENCH_CACHE", "cache")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    args = ["benchmark", "preset=smoke", "methods=[gaussian_rgb]", "logger=wandb",
            "logger.wandb.project=smoke_test", "logger.wandb.tags=[smoke]"]
    assert run_cli(*args) == 0
    out = tmp_path / "out" / "benchmark" / "smoke"
    stage_runs = {}
    for stage in ("probe_linear", "voc_cls_fc6"):
        (stage_dir,) = out.glob(f"gaussian_rgb/{stage}-*")
        (run,) = offline_runs(stage_dir)
        (info,) = contents(run)["info"]
        assert (info["project"], info["group"], info["name"]) == ("smoke_test", "benchmark-smoke",
                                                                   f"gaussian_rgb/{stage}")
        stage_runs[stage] = run
    sections = by_section(csv_rows(out / "leaderboard.csv"))
    assert {"leaderboard/linear_probe", "leaderboard/voc"} <= set(sections)
    first = assert_leaderboard_run(out, sections)
    assert (first["project"], first["group"], first["tags"]) == ("smoke_test", "benchmark-smoke", ["smoke"])
    measured = [line for line in sections["leaderboard/linear_probe"] if line["source"] == "measured"]
    assert [line["method"] for line in measured] == ["gaussian/rgb"]

    assert run_cli(*args) == 0  # again: stages skipped, the leaderboard run continued (same id)
    assert json.loads((out / "benchmark_summary.json").read_text())["ran"] == []
    runs = offline_runs(out)
    assert len(runs) == 2 and all(contents(r)["run"] == [first["id"]] for r in runs)
