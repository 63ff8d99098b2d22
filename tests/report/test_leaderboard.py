"""Leaderboard: gathering results.json files, mean ± std over seeds, published rows, the four outputs."""

from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT
from PIL import Image

from ssl_bench.models.layers import CONV_LAYERS
from ssl_bench.report.collect import ResultsWarning, collect
from ssl_bench.report.published import PUBLISHED_COLOR, PUBLISHED_PROBES, PUBLISHED_VOC, key_matches
from ssl_bench.report.render import OUTPUT_NAMES, csv_columns, render, to_markdown
from ssl_bench.report.table import build_table
from ssl_bench.runs.leaderboard import main as leaderboard_main

PROTOCOLS_MD = ROOT / "docs" / "protocols.md"

# per-seed top-1 of two methods; the expected statistics below are worked out by hand
COLOR = {  # colorization/full, seeds 0, 1, 2
    "conv1": [12.0, 13.0, 14.5], "conv2": [20.0, 22.0, 21.0], "conv3": [30.5, 31.0, 31.5],
    "conv4": [33.0, 34.0, 35.0], "conv5": [29.0, 30.0, 28.0]}
GAUSS = {  # gaussian, seeds 0, 1; conv3 missing from seed 1 so that cell has n=1
    "conv1": [15.0, 16.0], "conv2": [17.0, 19.0], "conv3": [16.0, None],
    "conv4": [14.0, 15.0], "conv5": [10.0, 12.0]}
N_PUBLISHED_PROBES = 7


def probe_record(method: str, seed: int, top1: dict[str, float | None], **extra) -> dict:
    metrics = {f"probe/{k}/top1": v for k, v in top1.items() if v is not None}
    metrics.update({f"probe/{k}/top5": min(100.0, v + 20) for k, v in top1.items() if v is not None})
    return {"schema_version": 1, "kind": "probe", "method": method, "probe": "linear",
            "status": "completed", "metrics": metrics, "seed": seed,
            "dataset": {"name": "synth10", "root": "/data/synth10"},
            "protocol": "linear, bilinear resize, 5 layers", **extra}


def write(path: Path, record: dict | str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    f = path / "results.json"
    f.write_text(record if isinstance(record, str) else json.dumps(record))
    return f


def seed_values(table: dict[str, list], seed: int) -> dict[str, float | None]:
    return {k: v[seed] for k, v in table.items()}


@pytest.fixture
def results(tmp_path: Path) -> dict[str, Path]:
    """Two result folders: the colorization seeds are split across them, plus three unusable files."""
    a, b = tmp_path / "runs_a", tmp_path / "runs_b"
    for seed in (0, 1):
        write(a / "color" / f"seed{seed}", probe_record("colorization/full", seed, seed_values(COLOR, seed),
                                                       best_layer="conv4"))
    write(b / "color" / "seed2", probe_record("colorization/full", 2, seed_values(COLOR, 2)))
    for seed in (0, 1):
        write(b / "gauss" / f"seed{seed}", probe_record("gaussian", seed, seed_values(GAUSS, seed)))
    return {
        "a": a, "b": b,
        "malformed": write(a / "broken", '{"kind": "probe", "status": '),
        "failed": write(b / "crashed", {**probe_record("gaussian", 7, seed_values(GAUSS, 0)),
                                        "status": "failed"}),
        "pretrain": write(a / "pretrain", {"schema_version": 1, "kind": "pretrain", "status": "completed",
                                           "method": "colorization/full", "metrics": {"pretrain/loss": 1.0},
                                           "dataset": {"name": "synth10"}, "seed": 0}),
    }


@pytest.fixture
def table(results):
    with pytest.warns(ResultsWarning):
        records = collect([results["a"], results["b"]])
    return build_table(records)


def row(table, method: str, published: bool = False):
    rows = [r for r in table.section("probes").rows if r.method == method and r.published == published]
    assert len(rows) == 1, [r.method for r in table.section("probes").rows]
    return rows[0]


# -------------------------------------------------------------------------------------------- stats


def test_mean_std_and_n_over_seeds(table):
    color = row(table, "colorization/full")
    for layer in CONV_LAYERS:
        cell = color.cells[layer]
        assert cell.n == 3
        assert cell.mean == pytest.approx(np.mean(COLOR[layer]))
        assert cell.std == pytest.approx(np.std(COLOR[layer], ddof=1))
        assert cell.std == pytest.approx(statistics.stdev(COLOR[layer]))  # sample, not population, std
    assert color.cells["conv3"].format() == "31.0 ± 0.5 (n=3)"
    assert color.cells["conv1"].format() == "13.2 ± 1.3 (n=3)"  # 13.1667 ± 1.2583
    assert color.n_runs == 3 and sorted(color.seeds) == [0, 1, 2]
    assert color.best()[0] == "conv4" and color.best()[1].format() == "34.0 ± 1.0 (n=3)"

    gauss = row(table, "gaussian")
    assert gauss.n_runs == 2
    assert gauss.cells["conv2"].format() == "18.0 ± 1.4 (n=2)"
    assert gauss.cells["conv3"].n == 1 and gauss.cells["conv3"].std is None
    assert gauss.cells["conv3"].format() == "16.0 (n=1)"
    # leaderboard order: the better best layer first
    measured = table.section("probes").measured
    assert [r.method for r in measured] == ["colorization/full", "gaussian"]


def test_unusable_files_warn_by_name_and_pretrain_is_only_counted(results):
    with pytest.warns(ResultsWarning) as caught:
        records = collect([results["a"], results["b"]])
    messages = [str(w.message) for w in caught]
    assert any(str(results["malformed"]) in m and "malformed JSON" in m for m in messages)
    assert any(str(results["failed"]) in m and "'failed'" in m for m in messages)
    assert len(messages) == 2
    assert len(records) == 6  # 3 + 2 probe runs and the pretrain run
    table = build_table(records)
    assert table.n_pretrain == 1
    assert [s.spec.key for s in table.sections] == ["probes"]
    assert "1 pretrain run found" in to_markdown(table)


def test_duplicate_seed_counts_once_and_bad_metric_is_ignored(tmp_path):
    old = write(tmp_path / "old", probe_record("m", 0, {"conv1": 10.0}, finished="2024-01-01T00:00:00"))
    new = write(tmp_path / "new", probe_record("m", 0, {"conv1": 20.0}, finished="2024-06-01T00:00:00"))
    nan = write(tmp_path / "nan", {**probe_record("m", 1, {"conv1": 30.0}),
                                   "metrics": {"probe/conv1/top1": "NaN"}})
    records = collect([tmp_path])
    with pytest.warns(ResultsWarning) as caught:
        table = build_table(records)
    r = table.section("probes").measured[0]
    assert r.cells["conv1"].values == (20.0,)  # seed 0 once (the newer), seed 1's value unusable
    messages = " ".join(str(w.message) for w in caught)
    assert str(old) in messages and str(new) in messages and str(nan) in messages
    assert table.warnings and all(isinstance(w, str) for w in table.warnings)


def test_overlapping_folders_read_each_file_once(results):
    with pytest.warns(ResultsWarning):
        once = collect([results["a"]])
        twice = collect([results["a"], results["a"] / "color", results["a"]])
    assert [r["path"] for r in once] == [r["path"] for r in twice]


def test_different_protocols_are_not_averaged(tmp_path):
    write(tmp_path / "a", probe_record("m", 0, {"conv1": 10.0}))
    write(tmp_path / "b", probe_record("m", 1, {"conv1": 20.0}, protocol="linear, avgpool"))
    rows = build_table(collect([tmp_path])).section("probes").measured
    assert sorted(r.cells["conv1"].mean for r in rows) == [10.0, 20.0]


# ---------------------------------------------------------------------------------------- published


def test_published_rows_present_and_marked(table):
    probes = table.section("probes")
    published = [r for r in probes.rows if r.published]
    assert len(published) == N_PUBLISHED_PROBES
    assert probes.rows[-N_PUBLISHED_PROBES:] == published  # after the measured rows
    zhang = row(table, "Zhang et al. (colorization)", published=True)
    assert [zhang.cells[k].mean for k in CONV_LAYERS] == [13.1, 24.8, 31.0, 32.6, 31.8]
    assert zhang.source == "published: Split-Brain Table 2" and zhang.data == "ImageNet-1k val"
    assert "bilinear" in zhang.protocol and zhang.suite_method == "colorization/full"
    assert row(table, "colorization/full").source == "measured: 3 seeds"
    assert row(table, "colorization/full").data == "synth10"
    # nothing measured for VOC or colour: their published numbers stay out of this table
    assert table.section("voc") is None and table.section("color") is None

    assert not any(r.published for r in build_table(collect([row_dir(table)]), published=False)
                   .section("probes").rows)


def row_dir(table) -> Path:
    return row(table, "colorization/full").files[0].parent


def _md_table(text: str, heading: str, next_heading: str = "\n## ") -> list[list[str]]:
    """Cells of the pipe-table lines between ``heading`` and the next ``next_heading``."""
    block = text.split(heading, 1)[1].split(next_heading, 1)[0]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in block.splitlines()
            if line.startswith("| ")]


@pytest.mark.skipif(not PROTOCOLS_MD.is_file(), reason="docs/protocols.md not available")
def test_published_numbers_match_protocols_md():
    """Every number of docs/protocols.md §4 tables, in order, is in published.py."""
    text = PROTOCOLS_MD.read_text()

    def numbers(heading: str) -> list[list[float | None]]:
        rows = _md_table(text, heading, next_heading="\n#")[1:]  # drop the header
        return [[None if c == "-" else float(c) for c in r[1:]] for r in rows if not set(r[0]) <= set("-")]

    assert numbers("### 4.1") == [[r.values[k] for k in CONV_LAYERS] for r in PUBLISHED_PROBES]
    assert numbers("### 4.2") == [[r.values[k] for k in ("cls_fc6", "cls_all", "det", "seg")]
                                  for r in PUBLISHED_VOC]
    color_keys = ("auc_raw", "auc_rebal", "classifier_top1", "amt_real")
    assert numbers("### 4.3") == [[r.values[k] for k in color_keys] for r in PUBLISHED_COLOR]


def test_suite_method_keys():
    assert key_matches("gaussian", "gaussian") and key_matches("gaussian", "gaussian/default")
    assert key_matches("colorization/full", "colorization/full")
    assert not key_matches("colorization/full", "colorization/l2")
    assert not key_matches(None, "anything")
    keys = {r.suite_method for r in PUBLISHED_PROBES}
    assert {"supervised", "gaussian", "kraehenbuehl", "context_prediction", "context_encoder",
            "colorization/full"} <= keys


# ------------------------------------------------------------------------------------------ outputs


@pytest.fixture
def rendered(results, tmp_path):
    """The outputs for the sample runs plus one method whose name needs HTML escaping."""
    write(results["b"] / "evil", probe_record("evil<script>alert(1)</script>", 0, {"conv1": 5.0}))
    with pytest.warns(ResultsWarning):
        table = build_table(collect([results["a"], results["b"]]))
    return table, render(table, tmp_path / "out")


def test_render_writes_four_files_atomically(rendered):
    _, paths = rendered
    assert set(paths) == {"md", "csv", "html", "png"}
    assert {p.name for p in paths.values()} == set(OUTPUT_NAMES.values())
    out = paths["md"].parent
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES.values())  # no temporaries left


def test_markdown_table(rendered):
    table, paths = rendered
    text = paths["md"].read_text(encoding="utf-8")
    assert text == to_markdown(table)
    block = text.split("## Per-layer frozen probes", 1)[1].split("\n## ", 1)[0]
    groups = block.split("\n### ")[1:]
    # no record has a protocol entry: measured rows are "protocol unknown", apart from the published
    assert [g.splitlines()[0] for g in groups] == [
        "Measured under protocol unknown (no protocol record, e.g. an older run): not comparable with the "
        "published numbers",
        "Published numbers (no run above used the published protocol)"]
    measured, published = ([line for line in g.splitlines() if line.startswith("|")] for g in groups)
    for lines in (measured, published):
        assert lines[0].startswith("| Method | Probe | Data | Source | n | conv1 |")
        assert re.fullmatch(r"\|(---\|)+", lines[1])
        assert len({line.count(" | ") for line in lines if not line.startswith("|---")}) == 1
    assert len(measured) - 2 == 3 and len(published) - 2 == N_PUBLISHED_PROBES
    # n once per row; a cell with fewer runs than its row shows its own n; bold = best measured mean
    assert "| colorization/full | linear | synth10 | measured | 3 | 13.2 ± 1.3 | **21.0 ± 1.0** | **31.0 ± 0.5** | " \
           "**34.0 ± 1.0** | **29.0 ± 1.0** | conv4: 34.0 ± 1.0 | P1 |" in text
    assert "| gaussian | linear | synth10 | measured | 2 | **15.5 ± 0.7** | 18.0 ± 1.4 | 16.0 (n=1) |" in text
    assert "(n=3)" not in text and "| 32.6 |" in text and "published: Split-Brain Table 2" in text
    legend = block.split("\n- P1: ", 1)[1]
    assert legend.startswith("Protocol unknown") and "\n- P2: ImageNet, frozen AlexNet" in legend


def test_csv_columns_and_values(rendered):
    _, paths = rendered
    with open(paths["csv"], newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == csv_columns()
    assert {"method", "source", "protocol", "data", "conv3_mean", "conv3_std", "conv3_n", "best_layer"} \
        <= set(reader.fieldnames)
    assert len(rows) == 3 + N_PUBLISHED_PROBES
    color = next(r for r in rows if r["method"] == "colorization/full")
    assert color["source"] == "measured" and color["n_runs"] == "3" and color["seeds"] == "0;1;2"
    for layer in CONV_LAYERS:
        assert float(color[f"{layer}_mean"]) == pytest.approx(np.mean(COLOR[layer]))
        assert float(color[f"{layer}_std"]) == pytest.approx(np.std(COLOR[layer], ddof=1))
        assert color[f"{layer}_n"] == "3"
    assert color["best_layer"] == "conv4" and color["recorded_best_layer"] == "conv4"
    assert len(color["files"].split(";")) == 3
    gauss = next(r for r in rows if r["method"] == "gaussian")
    assert gauss["conv3_n"] == "1" and gauss["conv3_std"] == ""
    zhang = next(r for r in rows if r["method"] == "Zhang et al. (colorization)")
    assert zhang["source"] == "published" and float(zhang["conv4_mean"]) == 32.6
    assert zhang["conv4_std"] == "" and zhang["data"] == "ImageNet-1k val"


def test_html_has_values_and_escapes(rendered):
    _, paths = rendered
    text = paths["html"].read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "<style>" in text
    assert '<td class="num best">31.0 ± 0.5</td>' in text and "conv4: 34.0 ± 1.0" in text
    assert '<td class="n">3</td>' in text and "(n=3)" not in text
    assert "evil&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<script" not in text
    assert text.count('<tr class="published">') == N_PUBLISHED_PROBES
    assert 'src="data:image/png;base64,' in text  # self-contained: the plot is inline
    assert "http://" not in text and "https://" not in text


def test_png_is_a_real_plot(rendered):
    _, paths = rendered
    with Image.open(paths["png"]) as img:
        assert img.format == "PNG"
        assert img.width >= 600 and 250 <= img.height <= 2000
        pixels = np.asarray(img.convert("L"))
    assert pixels.std() > 5  # not a blank canvas
    with Image.open(paths["png"]) as img:
        img.verify()


# -------------------------------------------------------------------------------------- command line


def test_main_prints_markdown_and_paths(results, tmp_path, capsys):
    out = tmp_path / "board"
    assert leaderboard_main([str(results["a"]), str(results["b"]), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "| colorization/full | linear | synth10 | measured | 3 |" in captured.out
    for name in OUTPUT_NAMES.values():
        assert str(out / name) in captured.out and (out / name).is_file()
    assert str(results["malformed"]) in captured.err and str(results["failed"]) in captured.err
    assert "malformed JSON" in (out / "leaderboard.md").read_text(encoding="utf-8")  # left-out list


def test_main_no_published(results, tmp_path, capsys):
    assert leaderboard_main([str(results["b"]), "--out", str(tmp_path / "o"), "--no-published"]) == 0
    assert "published:" not in capsys.readouterr().out


def test_missing_directory_is_named(tmp_path, capsys):
    missing = tmp_path / "no_such_runs"
    with pytest.raises(FileNotFoundError, match="no_such_runs"):
        collect([tmp_path, missing])
    assert leaderboard_main([str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_no_results_exits_1(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert leaderboard_main([str(tmp_path / "empty")]) == 1
    assert "no usable results.json" in capsys.readouterr().err
    write(tmp_path / "only_failed", {"kind": "probe", "status": "failed"})
    assert leaderboard_main([str(tmp_path / "only_failed")]) == 1
    assert "1 skipped" in capsys.readouterr().err
    write(tmp_path / "only_pretrain", {"kind": "pretrain", "status": "completed", "metrics": {}})
    assert leaderboard_main([str(tmp_path / "only_pretrain")]) == 1
    assert "1 pretrain run(s)" in capsys.readouterr().err
    assert not list(tmp_path.rglob("leaderboard*"))


# ---------------------------------------------------------------------------------------- protocols


def protocol(name: str, *deviations: str) -> dict:
    return {"name": name, "recipe": {}, "deviations": list(deviations)}


def test_only_unchanged_paper_runs_sit_beside_the_published_numbers(tmp_path):
    fast = protocol("fast", "geometry=train", "crop_size=56")
    for seed in (0, 1):
        write(tmp_path / f"paper{seed}", probe_record("colorization/full", seed, seed_values(COLOR, seed),
                                                      protocol=protocol("paper")))
        write(tmp_path / f"fast{seed}", probe_record("gaussian", seed, seed_values(GAUSS, seed), protocol=fast))
    write(tmp_path / "short", probe_record("kraehenbuehl", 0, {"conv1": 9.0},
                                           protocol=protocol("paper", "max_steps=3")))
    write(tmp_path / "old", probe_record("context_encoder", 0, {"conv1": 7.0}))  # a description string
    section = build_table(collect([tmp_path])).section("probes")
    titles = [g.title for g in section.groups]
    assert titles == [
        "Published protocol: measured rows next to the published numbers they reproduce",
        "Measured under protocol fast; deviations from the published recipe: geometry=train, crop_size=56: "
        "not comparable with the published numbers",
        "Measured under protocol paper; deviations from the published recipe: max_steps=3: not comparable "
        "with the published numbers",
        "Measured under protocol unknown (no protocol record, e.g. an older run): not comparable with the "
        "published numbers"]
    first = section.groups[0].rows
    # the comparable run, then the published row it reproduces, then the other published rows
    assert [(r.method, r.published) for r in first[:2]] == [("colorization/full", False),
                                                            ("Zhang et al. (colorization)", True)]
    assert len(first) == 1 + N_PUBLISHED_PROBES and all(r.published for r in first[1:])
    assert [[r.method for r in g.rows] for g in section.groups[1:]] == [
        ["gaussian"], ["kraehenbuehl"], ["context_encoder"]]
    assert section.rows == [r for g in section.groups for r in g.rows]
    text = to_markdown(build_table(collect([tmp_path])))
    assert "| colorization/full | linear | synth10 | measured | 2 |" in text


def test_csv_records_protocol_and_comparability(tmp_path):
    write(tmp_path / "p", probe_record("colorization/full", 0, {"conv1": 1.0}, protocol=protocol("paper")))
    write(tmp_path / "f", probe_record("gaussian", 0, {"conv1": 2.0},
                                       protocol=protocol("fast", "geometry=train", "cache=True")))
    paths = render(build_table(collect([tmp_path])), tmp_path / "out")
    with open(paths["csv"], newline="", encoding="utf-8") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert (rows["colorization/full"]["protocol_name"], rows["colorization/full"]["comparable"]) == ("paper", "1")
    assert rows["gaussian"]["comparable"] == "0" and rows["gaussian"]["deviations"] == "geometry=train;cache=True"
    assert rows["Gaussian"]["comparable"] == "1" and rows["Gaussian"]["source"] == "published"


# ----------------------------------------------------------------------------------------- Places205

PLACES_CONFIG = {"data": {"_target_": "ssl_bench.data.places205.Places205DataModule", "root": "/d/p205"}}


def places_record(method: str, seed: int, top1: dict[str, float | None], **extra) -> dict:
    return probe_record(method, seed, top1, dataset={"name": "p205", "root": "/d/p205", "num_classes": 205},
                        config=PLACES_CONFIG, **extra)


def test_places205_probes_have_their_own_section_apart_from_imagenet_rows(tmp_path):
    fast = protocol("fast", "geometry=train")
    write(tmp_path / "in_paper", probe_record("colorization/full", 0, seed_values(COLOR, 0),
                                              protocol=protocol("paper")))
    for seed in (0, 1):
        write(tmp_path / f"pl_paper{seed}", places_record("colorization/full", seed, seed_values(COLOR, seed),
                                                          protocol=protocol("paper")))
    write(tmp_path / "pl_fast", places_record("gaussian", 0, seed_values(GAUSS, 0), protocol=fast))
    table = build_table(collect([tmp_path]))
    probes, places = table.section("probes"), table.section("places")
    # the ImageNet-side table keeps its one measured row beside the ImageNet published rows, nothing else
    assert [(r.method, r.data) for r in probes.measured] == [("colorization/full", "synth10")]
    assert len(probes.groups) == 1 and len(probes.rows) == 1 + N_PUBLISHED_PROBES
    # Places205: the paper-protocol run sits in the published-protocol group (with no ImageNet rows),
    # the fast one in a group of its own
    assert [g.title for g in places.groups] == [
        "Published protocol (no published numbers shown in this table)",
        "Measured under protocol fast; deviations from the published recipe: geometry=train: not comparable "
        "with the published numbers"]
    assert [[(r.method, r.published) for r in g.rows] for g in places.groups] == [
        [("colorization/full", False)], [("gaussian", False)]]
    paper = places.groups[0].rows[0]
    assert paper.comparable and paper.n_runs == 2 and paper.data == "p205" and paper.probe == "linear"
    for layer in CONV_LAYERS:
        assert paper.cells[f"places_{layer}"].mean == pytest.approx(np.mean(COLOR[layer][:2]))
    assert paper.best()[0] == "conv4"
    text = to_markdown(table)
    assert "## Places205 per-layer frozen probes (top-1 %)" in text


def test_places205_is_told_by_the_data_module_before_the_folder_name(tmp_path):
    # a folder named like Places but read by another data module stays with the ImageNet probes;
    # a record without a config (written by hand, or by an older run) falls back to the data set name
    write(tmp_path / "named", probe_record("gaussian", 0, {"conv1": 1.0}, dataset={"name": "places205"},
                                           config={"data": {"_target_": "ssl_bench.data.imagenet100."
                                                                        "ImageNet100DataModule"}}))
    write(tmp_path / "bare", probe_record("kraehenbuehl", 0, {"conv1": 2.0}, dataset={"name": "Places205"}))
    write(tmp_path / "svm", {**places_record("context_encoder", 0, {}), "probe": "svm_voc07",
                             "metrics": {"voc07/svm/conv1/mAP": 3.0}})
    table = build_table(collect([tmp_path]))
    assert [r.method for r in table.section("probes").measured] == ["gaussian"]
    assert [r.method for r in table.section("places").measured] == ["kraehenbuehl"]
    assert [r.method for r in table.section("svm").measured] == ["context_encoder"]  # a VOC07 SVM stays VOC


def test_places205_csv_columns(tmp_path):
    write(tmp_path / "p", places_record("colorization/full", 0, {"conv2": 21.5}, protocol=protocol("paper")))
    paths = render(build_table(collect([tmp_path])), tmp_path / "out")
    with open(paths["csv"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["section"], r["method"], r["places_conv2_mean"], r["conv2_mean"]) for r in rows] == [
        ("places", "colorization/full", "21.5", "")]
