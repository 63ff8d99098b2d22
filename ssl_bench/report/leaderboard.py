"""Leaderboard: every ``results.json`` under some folders, tabulated beside the published numbers.

    ssl-bench leaderboard DIR... [--out DIR] [--no-published]
                          [--wandb-project P [--wandb-entity E] [--wandb-group G] [--wandb-tag T]...
                           [--wandb-mode offline|online]]

Runs are grouped by (data set, method, probe kind, protocol). Each cell is the mean and sample
standard deviation (ddof=1) over the group's runs -- one per seed -- with its own n, because a
layer's metric can be missing from some runs. The group is split by protocol as well as by the
three keys one might expect, so that, say, an average-pooling probe and a bilinear one are never
averaged together.

Sections (one table each; a section appears only when something was measured for it):

- ``probes``: linear / kNN probes, top-1 % per layer conv1..conv5 and the best layer;
- ``svm``: VOC2007 linear SVM per layer, mAP %;
- ``voc``: PASCAL VOC fine-tuning (classification fc6-8 / all, detection, segmentation);
- ``color``: colorization quality (AuC raw / rebalanced, classifier top-1).

Published rows (:mod:`ssl_bench.report.published`) follow the measured rows of their section,
marked "published" in the Source column and carrying their own data set and protocol: they are on
full ImageNet / VOC, usually not the data the measured rows come from.

"Best layer" is the layer with the highest *mean* over seeds, not each seed's own best (which
would be biased upward); a run's own ``best_layer`` is kept only as a CSV column.

With ``--wandb-project`` the table also goes to Weights & Biases, as one run of its own (job_type
"leaderboard", id derived from the output folder so that a re-run continues it): one W&B table per
section (:func:`wandb_tables`: ``leaderboard/linear_probe``, ``leaderboard/knn_probe``,
``leaderboard/voc07_svm``, ``leaderboard/voc``, ``leaderboard/colorization``, those present), the
layer plot as an image (``leaderboard/layers``) and leaderboard.md / .csv / .html as an artifact.

Files that cannot be used (malformed JSON, status other than "completed", unknown kind) are skipped
with a :class:`ResultsWarning` naming the file; they never stop the table.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssl_bench.report.published import ALL_PUBLISHED, PublishedRow, key_matches
from ssl_bench.io import atomic_write_bytes
from ssl_bench.models.layers import CONV_LAYERS

PROG = "ssl-bench leaderboard"
RESULTS_NAME = "results.json"
# Same value as ssl_bench.report.results.SCHEMA_VERSION; not imported from there because that module
# imports torch, which would make this read-only command take seconds to start.
SCHEMA_VERSION = 1
MISSING = "–"
LAYERS = CONV_LAYERS
OUTPUT_NAMES = {"md": "leaderboard.md", "csv": "leaderboard.csv", "html": "leaderboard.html",
                "png": "leaderboard_layers.png"}


class ResultsWarning(UserWarning):
    """A results file, or part of one, that the leaderboard left out; the message names the file."""


def _warn(message: str) -> None:
    warnings.warn(message, ResultsWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------
# table model


@dataclass(frozen=True)
class Column:
    """A value column: ``metric`` is the results.json metrics key ("" for published-only columns)."""

    key: str
    label: str
    metric: str = ""


@dataclass(frozen=True)
class SectionSpec:
    key: str
    title: str
    columns: tuple[Column, ...]
    per_layer: bool  # columns are conv1..conv5: a best-layer column and the layer plot apply
    unit: str


SECTIONS: tuple[SectionSpec, ...] = (
    SectionSpec("probes", "Per-layer frozen probes (top-1 %)",
                tuple(Column(layer, layer, f"probe/{layer}/top1") for layer in LAYERS), True, "top-1 %"),
    SectionSpec("svm", "VOC2007 linear SVM per layer (mAP %)",
                tuple(Column(f"svm_{layer}", layer, f"voc07/svm/{layer}/mAP") for layer in LAYERS),
                True, "mAP %"),
    SectionSpec("voc", "PASCAL VOC transfer (fine-tuned)",
                (Column("cls_fc6", "Cls fc6-8 (mAP)", "voc07/cls_fc6/mAP"),
                 Column("cls_all", "Cls all (mAP)", "voc07/cls_all/mAP"),
                 Column("det", "Det (mAP)", "voc07/det/mAP"),
                 Column("seg", "Seg (mIoU)", "voc12/seg/mIoU")), False, "%"),
    SectionSpec("color", "Colorization quality",
                (Column("auc_raw", "AuC raw", "color/auc_raw"),
                 Column("auc_rebal", "AuC rebal", "color/auc_rebal"),
                 Column("classifier_top1", "Classifier top-1", "color/classifier_top1"),
                 Column("amt_real", "Real-vs-fake labelled real", "color/amt_real")), False, "%"),
)
SECTION_BY_KEY: Mapping[str, SectionSpec] = {s.key: s for s in SECTIONS}


@dataclass(frozen=True)
class Stat:
    """The values of one cell: one per run for measured rows, the paper's single number otherwise."""

    values: tuple[float, ...]
    published: bool = False

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1); None below two runs, where it is undefined."""
        return float(np.std(self.values, ddof=1)) if self.n >= 2 and not self.published else None

    def format(self) -> str:
        if self.n == 0:
            return MISSING
        if self.published:
            return f"{self.mean:.1f}"
        std = self.std
        return f"{self.mean:.1f} (n=1)" if std is None else f"{self.mean:.1f} ± {std:.1f} (n={self.n})"


@dataclass
class Row:
    """One line of a section: a group of measured runs, or one published row."""

    section: str
    method: str
    probe: str
    data: str
    protocol: str
    published: bool
    cells: dict[str, Stat]
    citation: str = ""  # published rows: paper and table
    suite_method: str | None = None
    note: str = ""
    seeds: tuple[Any, ...] = ()
    files: tuple[Path, ...] = ()
    recorded_best: tuple[str, ...] = ()

    @property
    def n_runs(self) -> int:
        return len(self.files)

    @property
    def source(self) -> str:
        if self.published:
            return f"published: {self.citation}"
        known = [s for s in self.seeds if s is not None]
        unit = "seed" if len(known) == self.n_runs else "run"
        return f"measured: {self.n_runs} {unit}{'s' if self.n_runs != 1 else ''}"

    def best(self) -> tuple[str, Stat] | None:
        """(layer label, cell) with the highest mean among conv1..conv5; ties go to the shallower layer."""
        spec = SECTION_BY_KEY[self.section]
        if not spec.per_layer:
            return None
        present = [(c.label, self.cells[c.key]) for c in spec.columns if c.key in self.cells]
        return max(present, key=lambda kv: kv[1].mean) if present else None


@dataclass
class Section:
    spec: SectionSpec
    rows: list[Row]

    @property
    def measured(self) -> list[Row]:
        return [r for r in self.rows if not r.published]


@dataclass
class Table:
    """Sections with rows; ``warnings``: what :func:`build_table` left out (the CLI adds the files
    :func:`collect` skipped, so the written outputs list everything that is not in them)."""

    sections: list[Section]
    warnings: list[str] = field(default_factory=list)
    n_pretrain: int = 0

    def section(self, key: str) -> Section | None:
        return next((s for s in self.sections if s.spec.key == key), None)

    @property
    def n_measured_rows(self) -> int:
        return sum(len(s.measured) for s in self.sections)


# ----------------------------------------------------------------------------------------------
# collect


def collect(dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Every usable ``results.json`` found recursively under ``dirs``, as ``{"path", "record"}``.

    A file given directly instead of a folder is read as a results file. Files reached twice
    (overlapping or repeated arguments) are read once. Unusable files are skipped with a
    :class:`ResultsWarning`; a missing folder raises :class:`FileNotFoundError` naming it, because
    a typo would otherwise look like "no results".
    """
    if isinstance(dirs, (str, Path)):  # a lone path would otherwise be iterated character by character
        dirs = [dirs]
    missing = [str(d) for d in dirs if not Path(d).exists()]
    if missing:
        raise FileNotFoundError(f"results director{'y' if len(missing) == 1 else 'ies'} not found: "
                                + ", ".join(missing))
    seen: set[Path] = set()
    out: list[dict[str, Any]] = []
    for d in map(Path, dirs):
        for path in ([d] if d.is_file() else _find_results(d)):
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            record = _load(path)
            if record is not None:
                out.append({"path": path, "record": record})
    return out


FAILED_NAME = "failed.json"  # written by ssl_bench.runs.benchmark for a stage that raised


def _find_results(root: Path) -> list[Path]:
    found: list[Path] = []

    def unreadable(e: OSError) -> None:
        _warn(f"{e.filename}: cannot list folder ({e.strerror}); results below it are missing")

    for here, subdirs, files in os.walk(root, onerror=unreadable):
        subdirs.sort()  # deterministic order, so tables and warnings do not shuffle between runs
        if RESULTS_NAME in files:
            found.append(Path(here) / RESULTS_NAME)
        elif FAILED_NAME in files:  # a benchmark stage that failed: say which cells are missing and why
            _warn(_failure_text(Path(here) / FAILED_NAME))
    return found


def _failure_text(path: Path) -> str:
    try:
        failed = json.loads(path.read_text(encoding="utf-8"))
        return f"{path.parent}: stage {failed.get('stage', '?')} failed ({failed.get('reason', 'no reason recorded')}); its cells are missing"
    except (OSError, ValueError, AttributeError) as e:
        return f"{path.parent}: a stage failed (unreadable {FAILED_NAME}: {e}); its cells are missing"


def _load(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        _warn(f"{path}: cannot read ({e.strerror or e}); skipped")
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        _warn(f"{path}: malformed JSON ({e}); skipped")
        return None
    if not isinstance(record, dict):
        _warn(f"{path}: not a JSON object; skipped")
        return None
    version = record.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        _warn(f"{path}: schema_version {version!r}, this leaderboard reads {SCHEMA_VERSION}; skipped")
        return None
    status = record.get("status")
    if status != "completed":
        _warn(f"{path}: status {status!r} (not 'completed'); skipped")
        return None
    return record


# ----------------------------------------------------------------------------------------------
# build


def _route(record: Mapping[str, Any], path: Path | str,
           warn: Callable[[str], None]) -> tuple[str, str] | None:
    """(section key, probe label) of a record; None (with a warning) for kinds the table lacks."""
    kind = record.get("kind")
    if kind == "probe":
        probe = record.get("probe")
        if probe in ("linear", "knn"):
            return "probes", probe
        if probe == "svm_voc07":
            return "svm", probe
        warn(f"{path}: unknown probe {probe!r} (expected linear, knn or svm_voc07); skipped")
        return None
    if kind == "finetune":
        return "voc", "finetune"
    if kind == "colorization_eval":
        return "color", "colorization_eval"
    warn(f"{path}: unknown kind {kind!r}; skipped")
    return None


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _dataset_name(record: Mapping[str, Any]) -> str:
    ds = record.get("dataset")
    name = ds.get("name") if isinstance(ds, Mapping) else ds
    return str(name) if name not in (None, "") else "unknown"


def _recency(item: Mapping[str, Any]) -> tuple[str, float]:
    path = Path(item["path"])
    try:
        mtime = path.stat().st_mtime
    except OSError:
        mtime = 0.0
    return str(item["record"].get("finished") or ""), mtime


def build_table(records: Iterable[Mapping[str, Any]], *, published: bool = True) -> Table:
    """Group ``records`` (as returned by :func:`collect`) into sections of mean ± std rows.

    Items may also be bare record dicts (no path); they are then named "<record i>" in warnings.
    Two runs of one group with the same seed are one seed run twice (a rerun, or a copied folder):
    the newer (by "finished", then file time) is kept, with a warning, so that n counts seeds.
    ``published=False`` leaves the published rows out.
    """
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        _warn(message)

    table = _build(records, published, note)
    table.warnings = notes
    return table


def _build(records: Iterable[Mapping[str, Any]], published: bool,
           warn: Callable[[str], None]) -> Table:
    groups: dict[tuple[str, str, str, str, str], list[dict[str, Any]]] = {}
    n_pretrain = 0
    for i, item in enumerate(records):
        if "record" in item and "path" in item:
            item = dict(item)
        else:
            item = {"path": f"<record {i}>", "record": item}
        record, path = item["record"], item["path"]
        if record.get("kind") == "pretrain":
            n_pretrain += 1
            continue
        if record.get("status", "completed") != "completed":
            warn(f"{path}: status {record.get('status')!r} (not 'completed'); skipped")
            continue
        routed = _route(record, path, warn)
        if routed is None:
            continue
        if not isinstance(record.get("metrics"), Mapping):
            warn(f"{path}: no 'metrics' object; skipped")
            continue
        section, probe = routed
        protocol = str(record.get("protocol") or "not recorded")
        key = (section, _dataset_name(record), str(record.get("method") or "unknown"), probe, protocol)
        groups.setdefault(key, []).append(item)

    measured: dict[str, list[Row]] = {s.key: [] for s in SECTIONS}
    for (section, dataset, method, probe, protocol), items in groups.items():
        measured[section].append(_measured_row(section, dataset, method, probe, protocol, items, warn))

    sections: list[Section] = []
    for spec in SECTIONS:
        rows = measured[spec.key]
        if not rows:
            continue  # published numbers alone are in published.py; the table is about runs
        rows.sort(key=_rank)
        if published:
            rows += [_published_row(spec, p) for p in ALL_PUBLISHED.get(spec.key, ())]
        sections.append(Section(spec, rows))
    return Table(sections, n_pretrain=n_pretrain)


def _rank(row: Row) -> tuple[Any, ...]:
    # per-layer sections read as a leaderboard: within a data set and probe, best layer first
    best = row.best()
    return (row.data, row.probe, -best[1].mean if best else 0.0, row.method, row.protocol)


def _measured_row(section: str, dataset: str, method: str, probe: str, protocol: str,
                  items: list[dict[str, Any]], warn: Callable[[str], None]) -> Row:
    by_seed: dict[Any, dict[str, Any]] = {}
    unseeded: list[dict[str, Any]] = []
    for item in items:
        seed = item["record"].get("seed")
        if seed is None or not isinstance(seed, (int, str)):
            unseeded.append(item)  # cannot tell reruns apart: every such run counts
            continue
        # one trunk's VOC tasks (cls fc6-8, cls all, det, seg) are separate runs filling one row
        task = item["record"].get("task")
        seed = (seed, task) if task else seed
        if seed in by_seed:
            old = by_seed[seed]
            keep, drop = (item, old) if _recency(item) >= _recency(old) else (old, item)
            warn(f"{drop['path']}: seed {seed!r} of {method} ({probe}, {dataset}) also in "
                 f"{keep['path']}; keeping the newer, this one is ignored")
            by_seed[seed] = keep
        else:
            by_seed[seed] = item
    kept = [by_seed[s] for s in sorted(by_seed, key=lambda s: (isinstance(s, tuple), isinstance(s, str), str(s)))]
    kept += unseeded

    cells: dict[str, Stat] = {}
    for col in SECTION_BY_KEY[section].columns:
        if not col.metric:
            continue
        values = []
        for item in kept:
            raw = item["record"]["metrics"].get(col.metric)
            if raw is None:
                continue
            value = _number(raw)
            if value is None:
                warn(f"{item['path']}: metric {col.metric} = {raw!r} is not a finite number; ignored")
                continue
            values.append(value)
        if values:
            cells[col.key] = Stat(tuple(values))
    recorded = sorted({str(b) for it in kept if (b := it["record"].get("best_layer"))})
    return Row(section, method, probe, dataset, protocol, False, cells, suite_method=method,
               seeds=tuple(it["record"].get("seed") for it in kept),
               files=tuple(Path(str(it["path"])) for it in kept), recorded_best=tuple(recorded))


def _published_row(spec: SectionSpec, p: PublishedRow) -> Row:
    cells = {k: Stat((float(v),), published=True) for k, v in p.values.items() if v is not None}
    probe = "linear" if spec.key == "probes" else ("finetune" if spec.key == "voc" else "")
    return Row(spec.key, p.method, probe, p.data, p.protocol, True, cells, citation=p.cite,
               suite_method=p.suite_method, note=p.note)


# ----------------------------------------------------------------------------------------------
# render


def _protocol_text(row: Row) -> str:
    return f"{row.protocol}. Note: {row.note}" if row.note else row.protocol


def _best_text(row: Row) -> str:
    best = row.best()
    return f"{best[0]}: {best[1].format()}" if best else MISSING


def _display_cells(section: Section, row: Row) -> list[str]:
    out = [row.cells[c.key].format() if c.key in row.cells else MISSING for c in section.spec.columns]
    if section.spec.per_layer:
        out.append(_best_text(row))
    return out


def _value_headers(section: Section) -> list[str]:
    return [c.label for c in section.spec.columns] + (["Best layer"] if section.spec.per_layer else [])


def _method_text(row: Row) -> str:
    # the suite key shows which measured method a published row is the reference for
    return f"{row.method} [{row.suite_method}]" if row.published and row.suite_method else row.method


HEADER_NOTE = ("Measured rows: mean ± sample standard deviation (ddof=1) over seeds, n = runs in the "
               "cell. Published rows: the paper's single number, measured on full ImageNet / PASCAL VOC "
               "with the authors' budgets, so compare shapes (which layer peaks, the order of methods) "
               f"more than absolute values. {MISSING} = not reported.")


def to_markdown(table: Table) -> str:
    """The table as Markdown: one pipe table per section, protocols as numbered notes below it."""
    def cell(text: str) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    lines = ["# ssl_bench leaderboard", "", HEADER_NOTE, ""]
    for section in table.sections:
        protocols: list[str] = []
        headers = ["Method", *(["Probe"] if section.spec.per_layer else []), "Source", "Data",
                   *_value_headers(section), "Protocol"]
        lines += [f"## {section.spec.title}", "", "| " + " | ".join(headers) + " |",
                  "|" + "|".join("---" for _ in headers) + "|"]
        for row in section.rows:
            text = _protocol_text(row)
            if text not in protocols:
                protocols.append(text)
            values = [_method_text(row), *([row.probe] if section.spec.per_layer else []), row.source,
                      row.data, *_display_cells(section, row), f"[{protocols.index(text) + 1}]"]
            lines.append("| " + " | ".join(cell(v) for v in values) + " |")
        lines += [""] + [f"- [{i}] {cell(p)}" for i, p in enumerate(protocols, start=1)] + [""]
    lines += _footer(table, bullet="- ")
    return "\n".join(lines).rstrip() + "\n"


def _footer(table: Table, bullet: str) -> list[str]:
    lines = []
    if table.n_pretrain:
        lines.append(f"{table.n_pretrain} pretrain run{'s' if table.n_pretrain != 1 else ''} found "
                     "(not tabulated: the table compares evaluations of trunks).")
    if table.warnings:
        lines += ["", f"Left out ({len(table.warnings)}):", ""] + [bullet + w for w in table.warnings]
    return lines


CSV_META = ["section", "method", "suite_method", "probe", "data", "source", "citation", "protocol",
            "note", "n_runs", "seeds", "files"]


def csv_columns() -> list[str]:
    """CSV header: metadata, then mean/std/n per value column of every section, then best layer."""
    cols = list(CSV_META)
    for spec in SECTIONS:
        for c in spec.columns:
            cols += [f"{c.key}_mean", f"{c.key}_std", f"{c.key}_n"]
    return cols + ["best_layer", "best_mean", "best_std", "best_n", "recorded_best_layer"]


def to_csv(table: Table) -> str:
    """One CSV line per row, full precision (rounding is for the human-facing formats only)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=csv_columns())
    writer.writeheader()
    for section in table.sections:
        for row in section.rows:
            line: dict[str, Any] = {
                "section": section.spec.key, "method": row.method, "suite_method": row.suite_method or "",
                "probe": row.probe, "data": row.data, "source": "published" if row.published else "measured",
                "citation": row.citation, "protocol": row.protocol, "note": row.note,
                "n_runs": "" if row.published else row.n_runs,
                "seeds": ";".join("" if s is None else str(s) for s in row.seeds),
                "files": ";".join(str(f) for f in row.files),
                "recorded_best_layer": ";".join(row.recorded_best)}
            for key, stat in row.cells.items():
                line.update(_stat_fields(key, stat))
            best = row.best()
            if best:
                line["best_layer"] = best[0]
                line.update(_stat_fields("best", best[1]))
            writer.writerow(line)
    return buf.getvalue()


def _stat_fields(key: str, stat: Stat) -> dict[str, Any]:
    std = stat.std
    return {f"{key}_mean": repr(stat.mean), f"{key}_std": "" if std is None else repr(std),
            f"{key}_n": "" if stat.published else stat.n}


HTML_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tr.published td { background: #f7f7fb; color: #555; font-style: italic; }
td.protocol { font-size: 0.8em; max-width: 28em; }
p.note, ul.left-out { font-size: 0.85em; color: #555; }
img { max-width: 100%; }
"""


def to_html(table: Table, png: bytes | None = None) -> str:
    """A self-contained page (inline CSS, the plot as a data URI); every text is escaped."""
    def e(text: Any) -> str:
        return html.escape(str(text), quote=True)

    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>ssl_bench leaderboard</title>", f"<style>{HTML_CSS}</style></head><body>",
             "<h1>ssl_bench leaderboard</h1>", f'<p class="note">{e(HEADER_NOTE)}</p>']
    for section in table.sections:
        headers = ["Method", *(["Probe"] if section.spec.per_layer else []), "Source", "Data",
                   *_value_headers(section), "Protocol"]
        parts += [f"<h2>{e(section.spec.title)}</h2>", "<table>",
                  "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr></thead>", "<tbody>"]
        for row in section.rows:
            meta = [_method_text(row), *([row.probe] if section.spec.per_layer else []), row.source, row.data]
            tds = ([f"<td>{e(v)}</td>" for v in meta]
                   + [f'<td class="num">{e(v)}</td>' for v in _display_cells(section, row)]
                   + [f'<td class="protocol">{e(_protocol_text(row))}</td>'])
            cls = "published" if row.published else "measured"
            parts.append(f'<tr class="{cls}">' + "".join(tds) + "</tr>")
        parts += ["</tbody></table>"]
    if png:
        data = base64.b64encode(png).decode("ascii")
        parts += ["<h2>Per-layer results</h2>",
                  f'<img alt="per-layer results" src="data:image/png;base64,{data}">']
    footer = _footer(table, bullet="")
    if footer:
        parts.append('<ul class="left-out">' + "".join(f"<li>{e(x)}</li>" for x in footer if x) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def plot_layers(table: Table) -> bytes:
    """PNG of metric vs layer: measured probes (mean, std error bars), measured SVM, published.

    Published ImageNet rows get their own panel, dashed: they are 1000-way ImageNet top-1, on a
    different scale from a measured run on other data, so a shared axis would suggest a
    comparison the numbers do not support. A published row the suite runs has the colour of the
    measured method it is the reference for.
    """
    # Agg canvas directly: no pyplot, so the caller's global backend and figure list are untouched
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels: list[tuple[str, str, SectionSpec, list[Row]]] = []
    for key, title in (("probes", "Measured probes"), ("svm", "Measured VOC2007 SVM")):
        section = table.section(key)
        if section and section.measured:
            panels.append((title, section.spec.unit, section.spec, section.measured))
    probes = table.section("probes")
    published = [r for r in probes.rows if r.published] if probes else []
    if published:
        panels.append(("Published: ImageNet linear probes\n(Split-Brain Table 2; dashed)",
                       "top-1 % (ImageNet-1k val)", probes.spec, published))

    measured_methods = sorted({r.method for _, _, _, rows in panels for r in rows if not r.published})
    palette = [f"C{i}" for i in range(10)]
    colour = {m: palette[i % 10] for i, m in enumerate(measured_methods)}
    spare = iter(palette[len(measured_methods) % 10:] + palette[:len(measured_methods) % 10])

    # legends go under the panels (published curves fill the whole plot area); make room for them
    entries = max((len(rows) for *_, rows in panels), default=0)
    fig = Figure(figsize=(5.6 * max(1, len(panels)), 3.6 + 0.16 * entries), dpi=100,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    if not panels:
        axes[0].text(0.5, 0.5, "no per-layer results", ha="center", va="center")
        axes[0].set_axis_off()
    x = np.arange(1, len(LAYERS) + 1)
    for ax, (title, unit, spec, rows) in zip(axes, panels):
        for row in rows:
            stats = [row.cells.get(c.key) for c in spec.columns]
            y = np.array([s.mean if s else np.nan for s in stats])
            if row.published:
                linked = next((m for m in measured_methods if key_matches(row.suite_method, m)), None)
                c = colour[linked] if linked else next(spare, "0.5")
                ax.plot(x, y, ls="--", marker="s", ms=4, color=c, label=f"published: {row.method}")
            else:
                yerr = np.array([s.std if s and s.std is not None else 0.0 for s in stats])
                ax.errorbar(x, y, yerr=yerr, marker="o", ms=4, capsize=3, color=colour[row.method],
                            label=f"{row.method} ({row.probe}, {row.data}, n={row.n_runs})")
        ax.set_xticks(x, list(LAYERS))
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()



def render(table: Table, out_dir: str | Path) -> dict[str, Path]:
    """Write leaderboard.md / .csv / .html and leaderboard_layers.png; returns their paths by format."""
    out_dir = Path(out_dir)
    png = plot_layers(table)
    contents = {"md": to_markdown(table).encode("utf-8"), "csv": to_csv(table).encode("utf-8"),
                "html": to_html(table, png).encode("utf-8"), "png": png}
    return {fmt: atomic_write_bytes(out_dir / OUTPUT_NAMES[fmt], data) for fmt, data in contents.items()}


# ----------------------------------------------------------------------------------------------
# Weights & Biases

WANDB_META = ["method", "suite_method", "probe", "data", "source", "n_runs"]


def _wandb_key(section: str, probe: str) -> str:
    if section == "probes":
        return f"leaderboard/{probe}_probe"
    return "leaderboard/" + {"svm": "voc07_svm", "color": "colorization"}.get(section, section)


def wandb_tables(table: Table) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """{W&B key: (columns, rows)}: one table per section (the probes section split by probe kind).

    Column names are those of the CSV (``<col>_mean`` / ``_std`` / ``_n``, ``best_layer``...), with
    numbers as numbers (None where the CSV has an empty cell), so the two can be compared directly.
    """
    out: dict[str, tuple[list[str], list[list[Any]]]] = {}
    for section in table.sections:
        spec = section.spec
        cols = list(WANDB_META)
        for c in spec.columns:
            cols += [f"{c.key}_mean", f"{c.key}_std", f"{c.key}_n"]
        if spec.per_layer:
            cols += ["best_layer", "best_mean"]
        cols += ["protocol", "note", "citation"]
        for row in section.rows:
            values: list[Any] = [row.method, row.suite_method or "", row.probe, row.data,
                                 "published" if row.published else "measured",
                                 None if row.published else row.n_runs]
            for c in spec.columns:
                stat = row.cells.get(c.key)
                values += ([None, None, None] if stat is None else
                           [stat.mean, stat.std, None if stat.published else stat.n])
            if spec.per_layer:
                best = row.best()
                values += [best[0], best[1].mean] if best else [None, None]
            values += [row.protocol, row.note, row.citation]
            out.setdefault(_wandb_key(spec.key, row.probe), (cols, []))[1].append(values)
    return out


def log_to_wandb(table: Table, paths: Mapping[str, Path], out_dir: Path, *, project: str,
                 entity: str | None = None, group: str | None = None, tags: Sequence[str] = (),
                 mode: str | None = None, dirs: Sequence[str | Path] = ()) -> str:
    """The written leaderboard as a W&B run of its own (see :func:`ssl_bench.report.tracking.leaderboard_run`)."""
    from ssl_bench.report.tracking import leaderboard_run
    return leaderboard_run(
        out_dir, wandb_tables(table), project=project, entity=entity, group=group, tags=tags, mode=mode,
        image=paths.get("png"), files=[paths[f] for f in ("md", "csv", "html") if f in paths],
        config={"dirs": [str(d) for d in dirs], "measured_rows": table.n_measured_rows})


# ----------------------------------------------------------------------------------------------
# command line


def leaderboard_main(argv: list[str]) -> int:
    """``ssl-bench leaderboard DIR... [--out DIR] [--no-published] [--wandb-project P ...]``; returns
    the exit status.

    0: table written (and logged to W&B when asked); 1: nothing to tabulate; 2: usage error or a
    folder that does not exist; 3: table written, but logging it to W&B failed.
    """
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help or a usage error: report as a status, do not exit the caller
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResultsWarning)
        try:
            records = collect(args.dirs)
        except FileNotFoundError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 2
    skipped = [str(w.message) for w in caught if issubclass(w.category, ResultsWarning)]
    for message in skipped:
        print(f"{PROG}: warning: {message}", file=sys.stderr)

    where = ", ".join(map(str, args.dirs))
    if not records:
        why = f" ({len(skipped)} skipped, see the warnings above)" if skipped else ""
        print(f"{PROG}: no usable {RESULTS_NAME} under {where}{why}", file=sys.stderr)
        return 1
    with warnings.catch_warnings():  # printed below from table.warnings, once
        warnings.simplefilter("ignore", ResultsWarning)
        table = build_table(records, published=not args.no_published)
    for message in table.warnings:
        print(f"{PROG}: warning: {message}", file=sys.stderr)
    table.warnings[:0] = skipped
    if not table.n_measured_rows:
        print(f"{PROG}: no probe, finetune or colorization_eval results under {where} "
              f"({table.n_pretrain} pretrain run(s) found, which are not tabulated)", file=sys.stderr)
        return 1

    first = Path(args.dirs[0])
    out_dir = args.out if args.out is not None else (first.parent if first.is_file() else first)
    paths = render(table, out_dir)
    print(to_markdown(table))
    for path in paths.values():
        print(f"{PROG}: wrote {path}")
    if args.wandb_project:
        try:
            run_id = log_to_wandb(table, paths, Path(out_dir), project=args.wandb_project,
                                  entity=args.wandb_entity, group=args.wandb_group, tags=args.wandb_tags,
                                  mode=args.wandb_mode, dirs=args.dirs)
        except Exception as e:  # the files are written; say what did not happen
            print(f"{PROG}: error: logging to W&B failed ({type(e).__name__}: {e})", file=sys.stderr)
            return 3
        print(f"{PROG}: logged to W&B project {args.wandb_project}, run {run_id} (job_type leaderboard)")
    return 0


main = leaderboard_main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
