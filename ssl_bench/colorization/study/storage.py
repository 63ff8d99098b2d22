"""The answer log: one SQLite file (WAL mode) written one committed row per answer, and read back."""

from __future__ import annotations

import sqlite3
from dataclasses import astuple, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ssl_bench.colorization.study import UserError

__all__ = ["SCHEMA", "Answer", "open_db", "write_meta", "insert_answer", "count_answers", "read_answers"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rater TEXT NOT NULL,
    session TEXT NOT NULL,
    trial_id TEXT NOT NULL UNIQUE,
    image_id TEXT NOT NULL,
    method TEXT NOT NULL,
    is_sentinel INTEGER NOT NULL,
    left_is_real INTEGER NOT NULL,
    chose_left INTEGER NOT NULL,
    correct INTEGER NOT NULL,
    response_ms REAL,
    timestamp TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


@dataclass(frozen=True)
class Answer:
    """One row of the answers table (its id and timestamp are filled in on insertion)."""

    rater: str
    session: str
    trial_id: str
    image_id: str
    method: str
    is_sentinel: bool
    left_is_real: bool
    chose_left: bool
    response_ms: float | None

    @property
    def correct(self) -> bool:
        """The rater chose the real image."""
        return self.chose_left == self.left_is_real


def open_db(path: str | Path) -> sqlite3.Connection:
    """The answers file (created with its tables when new), in autocommit mode for explicit BEGIN/COMMIT."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # shared by the server's threads: the caller serialises every use (TuringApp holds its lock)
    con = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    # another process (a results run, a second server) may hold the write lock for a moment: wait, don't fail
    con.execute("PRAGMA busy_timeout=5000")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.executescript(SCHEMA)
    return con


def write_meta(con: sqlite3.Connection, meta: dict[str, Any]) -> None:
    """Record the study's settings (method, checkpoint, ...) as text, replacing earlier values."""
    for k, v in meta.items():
        con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, str(v)))


def insert_answer(con: sqlite3.Connection, answer: Answer) -> None:
    """Store one answer, committed before returning (so a killed server loses no answer given).

    On failure (constraint, full disk, ...) the transaction is rolled back and the sqlite3.Error re-raised:
    the connection stays usable for the next answer.
    """
    rater, session, trial_id, image_id, method, is_sentinel, left_is_real, chose_left, ms = astuple(answer)
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    con.execute("BEGIN IMMEDIATE")
    try:
        con.execute(
            "INSERT INTO answers (rater, session, trial_id, image_id, method, is_sentinel, left_is_real,"
            " chose_left, correct, response_ms, timestamp) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (rater, session, trial_id, image_id, method, int(is_sentinel), int(left_is_real), int(chose_left),
             int(answer.correct), ms, now))
        con.execute("COMMIT")
    except BaseException:
        # a transaction left open would make every later BEGIN fail: the log would take no more answers
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise


def count_answers(con: sqlite3.Connection) -> int:
    return int(con.execute("SELECT COUNT(*) FROM answers").fetchone()[0])


def read_answers(db: str | Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(answer rows as dicts, in insertion order; the meta table) of an answers file."""
    db = Path(db)
    if not db.is_file():
        raise UserError(f"answers file {db} does not exist")
    con = sqlite3.connect(db)
    try:
        con.row_factory = sqlite3.Row
        try:
            rows = [dict(r) for r in con.execute("SELECT * FROM answers ORDER BY id")]
            meta = {r["key"]: r["value"] for r in con.execute("SELECT key, value FROM meta")}
        except sqlite3.DatabaseError as e:
            raise UserError(f"{db} is not a Turing-test answers file: {e}") from e
    finally:
        con.close()
    return rows, meta
