"""The leaderboard table as files and as W&B tables.

:func:`render` writes leaderboard.md (:func:`to_markdown`), leaderboard.csv (:func:`to_csv`, full
precision), leaderboard.html (:func:`to_html`, self-contained) and leaderboard_layers.png
(:func:`plot_layers`).

:func:`log_to_wandb` sends the written table to Weights & Biases as one run of its own (job_type
"leaderboard", id derived from the output folder so that a re-run continues it): one W&B table per
section (:func:`wandb_tables`: ``leaderboard/linear_probe``, ``leaderboard/knn_probe``,
``leaderboard/voc07_svm``, ``leaderboard/voc``, ``leaderboard/colorization``, those present), the
layer plot as an image (``leaderboard/layers``) and leaderboard.md / .csv / .html as an artifact.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssl_bench.io import atomic_write_bytes
from ssl_bench.models.layers import CONV_LAYERS
from ssl_bench.report.published import key_matches
from ssl_bench.report.table import MISSING, SECTIONS, Group, Row, Section, SectionSpec, Stat, Table

OUTPUT_NAMES = {"md": "leaderboard.md", "csv": "leaderboard.csv", "html": "leaderboard.html",
                "png": "leaderboard_layers.png"}

HEADER_NOTE = ("Measured rows: mean ± sample standard deviation (ddof=1) over seeds; n = runs in the row "
               "(a cell with fewer shows its own n). Bold: the best measured value of a column within its "
               "group. A measured row sits beside the published numbers only when it was run under the "
               "published protocol with nothing changed; other runs are grouped by their protocol and its "
               "deviations. Published rows: the paper's single number on full ImageNet / PASCAL VOC with "
               f"the authors' budgets. {MISSING} = not reported.")


def render(table: Table, out_dir: str | Path) -> dict[str, Path]:
    """Write leaderboard.md / .csv / .html and leaderboard_layers.png; returns their paths by format."""
    out_dir = Path(out_dir)
    png = plot_layers(table)
    contents = {"md": to_markdown(table).encode("utf-8"), "csv": to_csv(table).encode("utf-8"),
                "html": to_html(table, png).encode("utf-8"), "png": png}
    return {fmt: atomic_write_bytes(out_dir / OUTPUT_NAMES[fmt], data) for fmt, data in contents.items()}


# ---------------------------------------------------------------------------------------- text cells


def _protocol_text(row: Row) -> str:
    """The legend's text for a row's protocol: the published description, or the measured protocol's
    name, deviations and setup."""
    if row.published:
        return f"{row.protocol}. Note: {row.note}" if row.note else row.protocol
    setup = f" ({row.protocol})" if row.protocol and row.protocol != "not recorded" else ""
    return row.protocol_title[0].upper() + row.protocol_title[1:] + setup


def _stat_text(row: Row, stat: Stat) -> str:
    return stat.format(None if row.published else row.n_runs)


def _best_text(row: Row) -> str:
    best = row.best()
    return f"{best[0]}: {_stat_text(row, best[1])}" if best else MISSING


def _value_cells(section: Section, group: Group, row: Row) -> list[tuple[str, bool]]:
    """(text, is the group's best measured value) per value column, then the best layer."""
    out = []
    for c in section.spec.columns:
        stat = row.cells.get(c.key)
        best = not row.published and stat is not None and stat.mean == group.best(c.key)
        out.append((_stat_text(row, stat) if stat else MISSING, best))
    if section.spec.per_layer:
        out.append((_best_text(row), False))
    return out


def _headers(section: Section) -> list[str]:
    """Column titles of a section in the Markdown and HTML tables."""
    values = [c.label for c in section.spec.columns] + (["Best layer"] if section.spec.per_layer else [])
    return ["Method", *(["Probe"] if section.spec.per_layer else []), "Data", "Source", "n", *values, "Protocol"]


def _meta_cells(section: Section, row: Row) -> list[str]:
    """The cells before the values: method, probe (per-layer sections), data, source, n."""
    # the suite key shows which measured method a published row is the reference for
    method = f"{row.method} [{row.suite_method}]" if row.published and row.suite_method else row.method
    source = f"published: {row.citation}" if row.published else "measured"
    n = "" if row.published else str(row.n_runs)
    return [method, *([row.probe] if section.spec.per_layer else []), row.data, source, n]


def _legend(section: Section) -> dict[str, str]:
    """Protocol text -> its short label ("P1", "P2", ...) in the order the rows show them."""
    labels: dict[str, str] = {}
    for row in section.rows:
        labels.setdefault(_protocol_text(row), f"P{len(labels) + 1}")
    return labels


def _footer(table: Table, bullet: str) -> list[str]:
    lines = []
    if table.n_pretrain:
        lines.append(f"{table.n_pretrain} pretrain run{'s' if table.n_pretrain != 1 else ''} found "
                     "(not tabulated: the table compares evaluations of trunks).")
    if table.warnings:
        lines += ["", f"Left out ({len(table.warnings)}):", ""] + [bullet + w for w in table.warnings]
    return lines


# ------------------------------------------------------------------------------------------ markdown


def to_markdown(table: Table) -> str:
    """The table as Markdown: one pipe table per section, protocols as numbered notes below it."""
    def cell(text: str) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    lines = ["# ssl_bench leaderboard", "", HEADER_NOTE, ""]
    for section in table.sections:
        legend = _legend(section)
        headers = _headers(section)
        lines += [f"## {section.spec.title}", ""]
        for group in section.groups:
            lines += [f"### {group.title}", "", "| " + " | ".join(headers) + " |",
                      "|" + "|".join("---" for _ in headers) + "|"]
            for row in group.rows:
                values = [cell(v) for v in _meta_cells(section, row)]
                values += [f"**{cell(v)}**" if best else cell(v) for v, best in _value_cells(section, group, row)]
                values.append(legend[_protocol_text(row)])
                lines.append("| " + " | ".join(values) + " |")
            lines.append("")
        lines += [f"- {label}: {cell(text)}" for text, label in legend.items()] + [""]
    lines += _footer(table, bullet="- ")
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------- csv

CSV_META = ["section", "method", "suite_method", "probe", "data", "source", "citation", "protocol",
            "protocol_name", "comparable", "deviations", "note", "n_runs", "seeds", "files"]


def _stat_columns(spec: SectionSpec) -> list[str]:
    return [f"{c.key}_{part}" for c in spec.columns for part in ("mean", "std", "n")]


def csv_columns() -> list[str]:
    """CSV header: metadata, then mean/std/n per value column of every section, then best layer."""
    cols = list(CSV_META)
    for spec in SECTIONS:
        cols += _stat_columns(spec)
    return cols + ["best_layer", "best_mean", "best_std", "best_n", "recorded_best_layer"]


def to_csv(table: Table) -> str:
    """One CSV line per row, full precision (rounding is for the human-facing formats only)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=csv_columns())
    writer.writeheader()
    for section in table.sections:
        for row in section.rows:
            writer.writerow(_csv_line(section, row))
    return buf.getvalue()


def _csv_line(section: Section, row: Row) -> dict[str, Any]:
    line: dict[str, Any] = {
        "section": section.spec.key, "method": row.method, "suite_method": row.suite_method or "",
        "probe": row.probe, "data": row.data, "source": "published" if row.published else "measured",
        "citation": row.citation, "protocol": row.protocol, "note": row.note,
        "protocol_name": row.protocol_name, "comparable": int(row.comparable), "deviations": ";".join(row.deviations),
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
    return line


def _stat_fields(key: str, stat: Stat) -> dict[str, Any]:
    std = stat.std
    return {f"{key}_mean": repr(stat.mean), f"{key}_std": "" if std is None else repr(std),
            f"{key}_n": "" if stat.published else stat.n}


# ---------------------------------------------------------------------------------------------- html

HTML_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #222; }
p.note { max-width: 60em; }
table { border-collapse: collapse; margin: 0.5em 0 0.6em; font-size: 0.88em; }
th, td { padding: 0.3em 0.55em; text-align: left; vertical-align: top; border-bottom: 1px solid #e3e3e3; }
thead th { background: #f0f0f0; border-bottom: 2px solid #bbb; white-space: nowrap; }
tr.group-head th { background: #fff; border-bottom: 1px solid #bbb; padding-top: 1em; font-weight: 600;
  text-align: left; white-space: normal; }
tr.group-head.comparable th { color: #124; }
tr.group-head.other th { color: #642; }
td.num, td.n { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.best { font-weight: 700; }
td.method { max-width: 22em; }
td.probe, td.label { white-space: nowrap; }
td.source { min-width: 9em; }
tr.published td { background: #f6f7fb; color: #444; }
tr.published td.source { font-style: italic; }
dl.legend { font-size: 0.8em; color: #444; margin: 0 0 2em; max-width: 90em;
  display: grid; grid-template-columns: max-content 1fr; gap: 0.2em 0.8em; }
dl.legend dt { font-weight: 600; }
dl.legend dd { margin: 0; }
p.note, ul.left-out { font-size: 0.85em; color: #555; }
img { max-width: 100%; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def to_html(table: Table, png: bytes | None = None) -> str:
    """A self-contained page (inline CSS, the plot as a data URI); every text is escaped."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>ssl_bench leaderboard</title>", f"<style>{HTML_CSS}</style></head><body>",
             "<h1>ssl_bench leaderboard</h1>", f'<p class="note">{_e(HEADER_NOTE)}</p>']
    for section in table.sections:
        parts += _html_section(section)
    if png:
        data = base64.b64encode(png).decode("ascii")
        parts += ["<h2>Per-layer results</h2>",
                  f'<img alt="per-layer results" src="data:image/png;base64,{data}">']
    footer = _footer(table, bullet="")
    if footer:
        parts.append('<ul class="left-out">' + "".join(f"<li>{_e(x)}</li>" for x in footer if x) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


META_CLASSES = ("method", "probe", "data", "source", "n")


def _html_section(section: Section) -> list[str]:
    """One table per section, one <tbody> per group (its title in a full-width header row), the
    protocols as short labels explained in the legend below."""
    headers = _headers(section)
    legend = _legend(section)
    meta = [c for c in META_CLASSES if c != "probe" or section.spec.per_layer]
    parts = [f"<h2>{_e(section.spec.title)}</h2>", "<table>",
             "<thead><tr>" + "".join(f'<th scope="col">{_e(h)}</th>' for h in headers) + "</tr></thead>"]
    for group in section.groups:
        kind = "comparable" if group.comparable else "other"
        parts += [f'<tbody class="{kind}">',
                  f'<tr class="group-head {kind}"><th colspan="{len(headers)}" scope="rowgroup">'
                  f"{_e(group.title)}</th></tr>"]
        for row in group.rows:
            tds = [f'<td class="{c}">{_e(v)}</td>' for c, v in zip(meta, _meta_cells(section, row))]
            tds += [f'<td class="num{" best" if best else ""}">{_e(v)}</td>'
                    for v, best in _value_cells(section, group, row)]
            tds.append(f'<td class="label">{legend[_protocol_text(row)]}</td>')
            cls = "published" if row.published else "measured"
            parts.append(f'<tr class="{cls}">' + "".join(tds) + "</tr>")
        parts.append("</tbody>")
    parts.append("</table>")
    items = "".join(f"<dt>{label}</dt><dd>{_e(text)}</dd>" for text, label in legend.items())
    return parts + [f'<dl class="legend">{items}</dl>']


# ---------------------------------------------------------------------------------------------- plot

Panel = tuple[str, str, SectionSpec, list[Row]]  # title, y-axis unit, section, rows


def _panels(table: Table) -> list[Panel]:
    panels: list[Panel] = []
    for key, title in (("probes", "Measured probes"), ("places", "Measured Places205 probes"),
                       ("svm", "Measured VOC2007 SVM")):
        section = table.section(key)
        if section and section.measured:
            panels.append((title, section.spec.unit, section.spec, section.measured))
    probes = table.section("probes")
    published = [r for r in probes.rows if r.published] if probes else []
    if published:
        panels.append(("Published: ImageNet linear probes\n(Split-Brain Table 2; dashed)",
                       "top-1 % (ImageNet-1k val)", probes.spec, published))
    return panels


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

    panels = _panels(table)
    measured_methods = sorted({r.method for *_, rows in panels for r in rows if not r.published})
    # legends go under the panels (published curves fill the whole plot area); make room for them
    entries = max((len(rows) for *_, rows in panels), default=0)
    fig = Figure(figsize=(5.6 * max(1, len(panels)), 3.6 + 0.16 * entries), dpi=100,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    if not panels:
        axes[0].text(0.5, 0.5, "no per-layer results", ha="center", va="center")
        axes[0].set_axis_off()
    colour = _colours(measured_methods)
    for ax, panel in zip(axes, panels):
        _draw_panel(ax, panel, colour)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _colours(measured_methods: list[str]) -> Callable[[Row], str]:
    """A colour per row: a measured method's own, shared by the published rows that reference it;
    unrelated published rows take the palette's unused colours in turn."""
    palette = [f"C{i}" for i in range(10)]
    own = {m: palette[i % 10] for i, m in enumerate(measured_methods)}
    spare = iter(palette[len(measured_methods) % 10:] + palette[:len(measured_methods) % 10])

    def colour(row: Row) -> str:
        if not row.published:
            return own[row.method]
        linked = next((m for m in measured_methods if key_matches(row.suite_method, m)), None)
        return own[linked] if linked else next(spare, "0.5")

    return colour


def _draw_panel(ax: Any, panel: Panel, colour: Callable[[Row], str]) -> None:
    title, unit, spec, rows = panel
    x = np.arange(1, len(CONV_LAYERS) + 1)
    for row in rows:
        stats = [row.cells.get(c.key) for c in spec.columns]
        y = np.array([s.mean if s else np.nan for s in stats])
        if row.published:
            ax.plot(x, y, ls="--", marker="s", ms=4, color=colour(row), label=f"published: {row.method}")
        else:
            yerr = np.array([s.std if s and s.std is not None else 0.0 for s in stats])
            ax.errorbar(x, y, yerr=yerr, marker="o", ms=4, capsize=3, color=colour(row),
                        label=f"{row.method} ({row.probe}, {row.data}, n={row.n_runs})")
    ax.set_xticks(x, list(CONV_LAYERS))
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(unit)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)


# ----------------------------------------------------------------------------------- Weights & Biases

WANDB_META = ["method", "suite_method", "probe", "data", "source", "n_runs"]


def _wandb_key(section: str, probe: str) -> str:
    if section in ("probes", "places"):
        return f"leaderboard/{'places_' if section == 'places' else ''}{probe}_probe"
    return "leaderboard/" + {"svm": "voc07_svm", "color": "colorization"}.get(section, section)


def wandb_tables(table: Table) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """{W&B key: (columns, rows)}: one table per section (the probes section split by probe kind).

    Column names are those of the CSV (``<col>_mean`` / ``_std`` / ``_n``, ``best_layer``...), with
    numbers as numbers (None where the CSV has an empty cell), so the two can be compared directly.
    """
    out: dict[str, tuple[list[str], list[list[Any]]]] = {}
    for section in table.sections:
        spec = section.spec
        cols = [*WANDB_META, *_stat_columns(spec), *(["best_layer", "best_mean"] if spec.per_layer else []),
                "protocol", "note", "citation"]
        for row in section.rows:
            out.setdefault(_wandb_key(spec.key, row.probe), (cols, []))[1].append(_wandb_row(spec, row))
    return out


def _wandb_row(spec: SectionSpec, row: Row) -> list[Any]:
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
    return values + [row.protocol, row.note, row.citation]


def log_to_wandb(table: Table, paths: Mapping[str, Path], out_dir: Path, *, project: str,
                 entity: str | None = None, group: str | None = None, tags: Sequence[str] = (),
                 mode: str | None = None, dirs: Sequence[str | Path] = ()) -> str:
    """The written leaderboard as a W&B run of its own (see :func:`ssl_bench.report.tracking.leaderboard_run`)."""
    # imported here: tracking pulls in the Hydra config, which the leaderboard without W&B never needs
    from ssl_bench.report import tracking
    return tracking.leaderboard_run(
        out_dir, wandb_tables(table), project=project, entity=entity, group=group, tags=tags, mode=mode,
        image=paths.get("png"), files=[paths[f] for f in ("md", "csv", "html") if f in paths],
        config={"dirs": [str(d) for d in dirs], "measured_rows": table.n_measured_rows})


__all__ = ["HEADER_NOTE", "OUTPUT_NAMES", "csv_columns", "log_to_wandb", "plot_layers", "render", "to_csv",
           "to_html", "to_markdown", "wandb_tables"]
