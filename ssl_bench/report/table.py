"""The leaderboard's table: sections of rows of mean ± std cells, and :func:`build_table`.

Runs are grouped by (data set, method, probe kind, protocol). Each cell is the mean and sample
standard deviation (ddof=1) over the group's runs -- one per seed -- with its own n, because a
layer's metric can be missing from some runs. The group is split by protocol as well as by the
three keys one might expect, so that, say, an average-pooling probe and a bilinear one are never
averaged together.

Sections (one table each; a section appears only when something was measured for it):

- ``probes``: linear / kNN probes, top-1 % per layer conv1..conv5 and the best layer;
- ``places``: the same probes measured on Places205 (205 scene classes), apart from the ImageNet
  published rows they are not comparable with (:func:`~ssl_bench.report.collect.is_places205`);
- ``svm``: VOC2007 linear SVM per layer, mAP %;
- ``voc``: PASCAL VOC fine-tuning (classification fc6-8 / all, detection, segmentation);
- ``color``: colorization quality (AuC raw / rebalanced, classifier top-1).

Each section is split into groups by protocol (:class:`Group`). A measured row shares a group with
the published rows (:mod:`ssl_bench.report.published`) only when its record's ``protocol`` entry is
comparable (:func:`ssl_bench.report.protocol.is_comparable`: the published recipe, nothing
overridden); it is then placed next to the published row it reproduces. Every other measured row
goes into a group of its own protocol (name and deviations), and records without a protocol entry
(older runs) into "protocol unknown". Published rows are on full ImageNet / VOC, usually not the
data the measured rows come from.

"Best layer" is the layer with the highest *mean* over seeds, not each seed's own best (which
would be biased upward); a run's own ``best_layer`` is kept only as a CSV column.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssl_bench.models.layers import CONV_LAYERS
from ssl_bench.report.collect import dataset_name, route, warn_results
from ssl_bench.report.protocol import is_comparable
from ssl_bench.report.published import ALL_PUBLISHED, PublishedRow, key_matches

MISSING = "–"
UNKNOWN = "unknown"


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
                tuple(Column(layer, layer, f"probe/{layer}/top1") for layer in CONV_LAYERS), True, "top-1 %"),
    SectionSpec("places", "Places205 per-layer frozen probes (top-1 %)",
                tuple(Column(f"places_{layer}", layer, f"probe/{layer}/top1") for layer in CONV_LAYERS),
                True, "top-1 %"),
    SectionSpec("svm", "VOC2007 linear SVM per layer (mAP %)",
                tuple(Column(f"svm_{layer}", layer, f"voc07/svm/{layer}/mAP") for layer in CONV_LAYERS),
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

    def format(self, row_n: int | None = None) -> str:
        """"mean ± std", with this cell's n when it differs from its row's ``row_n`` (None: always)."""
        if self.n == 0:
            return MISSING
        if self.published:
            return f"{self.mean:.1f}"
        std = self.std
        text = f"{self.mean:.1f}" if std is None else f"{self.mean:.1f} ± {std:.1f}"
        return text if row_n == self.n else f"{text} (n={self.n})"


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
    protocol_name: str = ""  # measured rows: the record's protocol name ("paper", "fast", "unknown")
    deviations: tuple[str, ...] = ()
    comparable: bool = False  # published rows, and measured rows under the unchanged published recipe

    @property
    def protocol_title(self) -> str:
        """The protocol a measured row was run under, as its group's title names it."""
        if self.protocol_name == UNKNOWN:
            return "protocol unknown (no protocol record, e.g. an older run)"
        if not self.deviations:
            return f"protocol {self.protocol_name}"
        return f"protocol {self.protocol_name}; deviations from the published recipe: {', '.join(self.deviations)}"

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
class Group:
    """Rows that may be read against each other: the published rows with the measured rows run under
    their protocol (``comparable``), or the measured rows of one other protocol."""

    title: str
    comparable: bool
    rows: list[Row]

    def best(self, key: str) -> float | None:
        """The highest measured mean of column ``key`` (None with fewer than two measured values)."""
        means = [r.cells[key].mean for r in self.rows if not r.published and key in r.cells]
        return max(means) if len(means) >= 2 else None


@dataclass
class Section:
    spec: SectionSpec
    rows: list[Row]
    groups: list[Group] = field(default_factory=list)

    @property
    def measured(self) -> list[Row]:
        return [r for r in self.rows if not r.published]


@dataclass
class Table:
    """Sections with rows; ``warnings``: what :func:`build_table` left out (the leaderboard command
    adds the files :func:`~ssl_bench.report.collect.collect` skipped, so the written outputs list
    everything that is not in them)."""

    sections: list[Section]
    warnings: list[str] = field(default_factory=list)
    n_pretrain: int = 0

    def section(self, key: str) -> Section | None:
        return next((s for s in self.sections if s.spec.key == key), None)

    @property
    def n_measured_rows(self) -> int:
        return sum(len(s.measured) for s in self.sections)


Warn = Callable[[str], None]
GroupKey = tuple[str, str, str, str, str]  # section, data set, method, probe, protocol key


def build_table(records: Iterable[Mapping[str, Any]], *, published: bool = True) -> Table:
    """Group ``records`` (as returned by :func:`~ssl_bench.report.collect.collect`) into sections
    of mean ± std rows.

    Items may also be bare record dicts (no path); they are then named "<record i>" in warnings.
    Two runs of one group with the same seed are one seed run twice (a rerun, or a copied folder):
    the newer (by "finished", then file time) is kept, with a warning, so that n counts seeds.
    ``published=False`` leaves the published rows out.
    """
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        warn_results(message)

    groups, n_pretrain = _group(records, note)
    measured: dict[str, list[Row]] = {s.key: [] for s in SECTIONS}
    for key, items in groups.items():
        measured[key[0]].append(_measured_row(key, items, note))
    sections: list[Section] = []
    for spec in SECTIONS:
        rows = measured[spec.key]
        if not rows:
            continue  # published numbers alone are in published.py; the table is about runs
        rows.sort(key=_rank)
        refs = [_published_row(spec, p) for p in ALL_PUBLISHED.get(spec.key, ())] if published else []
        groups = group_rows(rows, refs)
        sections.append(Section(spec, [r for g in groups for r in g.rows], groups))
    return Table(sections, warnings=notes, n_pretrain=n_pretrain)


def group_rows(measured: list[Row], published: list[Row]) -> list[Group]:
    """The section's groups: comparable measured rows each followed by the published rows it
    reproduces (then the other published rows), and one group per other protocol. Measured groups
    come first when no measured row is comparable, so a table of quick runs opens with them."""
    paired: list[Row] = []
    left = list(published)
    for row in (r for r in measured if r.comparable):
        mates = [p for p in left if key_matches(p.suite_method, row.method)]
        paired += [row, *mates]
        left = [p for p in left if p not in mates]
    paired += left
    others: dict[str, list[Row]] = {}
    for row in (r for r in measured if not r.comparable):
        others.setdefault(row.protocol_title, []).append(row)
    rest = [Group(f"Measured under {title}: not comparable with the published numbers", False, rows)
            for title, rows in others.items()]
    if not paired:
        return rest
    n_measured = sum(not r.published for r in paired)
    title = ("Published protocol: measured rows next to the published numbers they reproduce" if n_measured
             else "Published numbers (no run above used the published protocol)")
    if not published:
        title = "Published protocol (no published numbers shown in this table)"
    group = Group(title, True, paired)
    return [group, *rest] if n_measured else [*rest, group]


def _group(records: Iterable[Mapping[str, Any]],
           warn: Warn) -> tuple[dict[GroupKey, list[dict[str, Any]]], int]:
    """Usable records by group key, and the number of pretrain records (counted, not tabulated)."""
    groups: dict[GroupKey, list[dict[str, Any]]] = {}
    n_pretrain = 0
    for i, item in enumerate(records):
        item = dict(item) if "record" in item and "path" in item else {"path": f"<record {i}>", "record": item}
        record, path = item["record"], item["path"]
        if record.get("kind") == "pretrain":
            n_pretrain += 1
            continue
        if record.get("status", "completed") != "completed":
            warn(f"{path}: status {record.get('status')!r} (not 'completed'); skipped")
            continue
        routed = route(record, path, warn)
        if routed is None:
            continue
        if not isinstance(record.get("metrics"), Mapping):
            warn(f"{path}: no 'metrics' object; skipped")
            continue
        section, probe = routed
        name, deviations, comparable, setup = protocol_of(record)
        # a VOC row's columns are different tasks, each with its own recipe (and so its own deviation
        # list): one trunk's tasks under one protocol fill one row; per-layer rows split by deviations
        protocol = ("|".join([name, ";".join(deviations), setup]) if SECTION_BY_KEY[section].per_layer
                    else f"{name}|{'comparable' if comparable else 'deviating'}")
        key = (section, dataset_name(record), str(record.get("method") or "unknown"), probe, protocol)
        groups.setdefault(key, []).append(item)
    return groups, n_pretrain


def protocol_of(record: Mapping[str, Any]) -> tuple[str, tuple[str, ...], bool, str]:
    """(protocol name, deviations, comparable, description) of a record. A ``protocol`` entry is
    {"name", "recipe", "deviations"}; anything else (an older run's description string, or nothing)
    is protocol "unknown", never comparable."""
    entry = record.get("protocol")
    if isinstance(entry, Mapping) and entry.get("name"):
        deviations = tuple(str(d) for d in entry.get("deviations") or ())
        return str(entry["name"]), deviations, is_comparable(entry), str(record.get("setup") or "")
    return UNKNOWN, (), False, str(entry or record.get("setup") or "not recorded")


def _rank(row: Row) -> tuple[Any, ...]:
    # per-layer sections read as a leaderboard: within a data set and probe, best layer first
    best = row.best()
    return (row.data, row.probe, -best[1].mean if best else 0.0, row.method, row.protocol)


def _measured_row(key: GroupKey, items: list[dict[str, Any]], warn: Warn) -> Row:
    section, dataset, method, probe, _ = key
    kept = _one_per_seed(items, f"{method} ({probe}, {dataset})", warn)
    recorded = sorted({str(b) for it in kept if (b := it["record"].get("best_layer"))})
    name, deviations, comparable, setup = protocol_of(kept[0]["record"])
    # the union, in order, over the row's runs (one per VOC task)
    deviations = tuple(dict.fromkeys(d for it in kept for d in protocol_of(it["record"])[1]))
    return Row(section, method, probe, dataset, setup, False, _cells(section, kept, warn),
               suite_method=method, seeds=tuple(it["record"].get("seed") for it in kept),
               files=tuple(Path(str(it["path"])) for it in kept), recorded_best=tuple(recorded),
               protocol_name=name, deviations=deviations, comparable=comparable)


def _one_per_seed(items: list[dict[str, Any]], group: str, warn: Warn) -> list[dict[str, Any]]:
    """The newest run of each seed (seeds in order), then every run without a usable seed."""
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
        old = by_seed.get(seed)
        if old is None:
            by_seed[seed] = item
            continue
        keep, drop = (item, old) if _recency(item) >= _recency(old) else (old, item)
        warn(f"{drop['path']}: seed {seed!r} of {group} also in {keep['path']}; "
             "keeping the newer, this one is ignored")
        by_seed[seed] = keep
    order = sorted(by_seed, key=lambda s: (isinstance(s, tuple), isinstance(s, str), str(s)))
    return [by_seed[s] for s in order] + unseeded


def _recency(item: Mapping[str, Any]) -> tuple[str, float]:
    try:
        mtime = Path(item["path"]).stat().st_mtime
    except OSError:
        mtime = 0.0
    return str(item["record"].get("finished") or ""), mtime


def _cells(section: str, kept: list[dict[str, Any]], warn: Warn) -> dict[str, Stat]:
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
    return cells


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _published_row(spec: SectionSpec, p: PublishedRow) -> Row:
    cells = {k: Stat((float(v),), published=True) for k, v in p.values.items() if v is not None}
    probe = "linear" if spec.key in ("probes", "places") else ("finetune" if spec.key == "voc" else "")
    return Row(spec.key, p.method, probe, p.data, p.protocol, True, cells, citation=p.cite,
               suite_method=p.suite_method, note=p.note, protocol_name="published", comparable=True)


__all__ = ["MISSING", "SECTIONS", "SECTION_BY_KEY", "UNKNOWN", "Column", "Group", "Row", "Section", "SectionSpec",
           "Stat", "Table", "build_table", "group_rows", "protocol_of"]
