"""Finding and reading the results the leaderboard tabulates.

:func:`collect` gathers every ``results.json`` under some folders; a ``failed.json`` (a benchmark
stage that raised) in place of one becomes a warning naming the stage and its reason. Files that
cannot be used (unreadable, malformed JSON, another schema version, status other than "completed")
are skipped with a :class:`ResultsWarning` naming the file; they never stop the table.
:func:`route` says which table section a record belongs to: a linear or kNN probe on Places205 goes
to its own section (``places``), because its 205 scene classes make it comparable with published
Places205 numbers only, never with the ImageNet ones.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ssl_bench.errors import MissingDataError

RESULTS_NAME = "results.json"
FAILED_NAME = "failed.json"  # written by ssl_bench.runs.benchmark for a stage that raised
PLACES205_DATAMODULE = "Places205DataModule"  # the class conf/data/places205.yaml builds
# Same value as ssl_bench.report.results.SCHEMA_VERSION; not imported from there because that module
# imports torch, which would make the read-only leaderboard command take seconds to start.
SCHEMA_VERSION = 1


class ResultsWarning(UserWarning):
    """A results file, or part of one, that the leaderboard left out; the message names the file."""


def warn_results(message: str) -> None:
    """Emit ``message`` as a :class:`ResultsWarning`, attributed to the caller's caller."""
    warnings.warn(message, ResultsWarning, stacklevel=3)


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
        raise MissingDataError(f"results director{'y' if len(missing) == 1 else 'ies'} not found: "
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


def _find_results(root: Path) -> list[Path]:
    found: list[Path] = []

    def unreadable(e: OSError) -> None:
        warn_results(f"{e.filename}: cannot list folder ({e.strerror}); results below it are missing")

    for here, subdirs, files in os.walk(root, onerror=unreadable):
        subdirs.sort()  # deterministic order, so tables and warnings do not shuffle between runs
        if RESULTS_NAME in files:
            found.append(Path(here) / RESULTS_NAME)
        elif FAILED_NAME in files:  # a benchmark stage that failed: say which cells are missing and why
            warn_results(_failure_text(Path(here) / FAILED_NAME))
    return found


def _failure_text(path: Path) -> str:
    try:
        failed = json.loads(path.read_text(encoding="utf-8"))
        return (f"{path.parent}: stage {failed.get('stage', '?')} failed "
                f"({failed.get('reason', 'no reason recorded')}); its cells are missing")
    except (OSError, ValueError, AttributeError) as e:
        return f"{path.parent}: a stage failed (unreadable {FAILED_NAME}: {e}); its cells are missing"


def _load(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        warn_results(f"{path}: cannot read ({e.strerror or e}); skipped")
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        warn_results(f"{path}: malformed JSON ({e}); skipped")
        return None
    if not isinstance(record, dict):
        warn_results(f"{path}: not a JSON object; skipped")
        return None
    version = record.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        warn_results(f"{path}: schema_version {version!r}, this leaderboard reads {SCHEMA_VERSION}; skipped")
        return None
    status = record.get("status")
    if status != "completed":
        warn_results(f"{path}: status {status!r} (not 'completed'); skipped")
        return None
    return record


def route(record: Mapping[str, Any], path: Path | str,
          warn: Callable[[str], None]) -> tuple[str, str] | None:
    """(section key, probe label) of a record; None (with a warning) for kinds the table lacks."""
    kind = record.get("kind")
    if kind == "probe":
        probe = record.get("probe")
        if probe in ("linear", "knn"):
            return ("places" if is_places205(record) else "probes"), probe
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


def is_places205(record: Mapping[str, Any]) -> bool:
    """Whether a record was measured on Places205: its resolved config's data module when the record
    has one, otherwise (a record written without a config) a data set name starting with "places"."""
    config = record.get("config")
    data = config.get("data") if isinstance(config, Mapping) else None
    target = data.get("_target_") if isinstance(data, Mapping) else None
    if target:
        # the data set name is only the root folder's name; the data module says what was read
        return str(target).rsplit(".", 1)[-1] == PLACES205_DATAMODULE
    return dataset_name(record).lower().startswith("places")


def dataset_name(record: Mapping[str, Any]) -> str:
    """The record's data set name ("unknown" when it has none)."""
    ds = record.get("dataset")
    name = ds.get("name") if isinstance(ds, Mapping) else ds
    return str(name) if name not in (None, "") else "unknown"


__all__ = ["FAILED_NAME", "PLACES205_DATAMODULE", "RESULTS_NAME", "SCHEMA_VERSION", "ResultsWarning", "collect",
           "dataset_name", "is_places205", "route", "warn_results"]
