"""W&B logging, read back from an offline run's own files: metrics, a table, an image, the results
artifact, the resolved config, and a run id that stays the same when the same run is started again."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from conftest import tiny_overrides
from ssl_bench.tracking import layer_rows, wandb_run_kwargs

pytestmark = pytest.mark.slow

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
    got: dict[str, list] = {"history": [], "summary": [], "artifact": [], "config": [], "run": []}
    for r in read_wandb_records(data):
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
