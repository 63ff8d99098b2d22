"""Raters' sessions of trials, and the answers they give: the state behind the study's web page."""

from __future__ import annotations

import logging
import random
import secrets
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssl_bench.colorization.study import UserError
from ssl_bench.colorization.study.images import ImageItem
from ssl_bench.colorization.study.storage import Answer, insert_answer, open_db, write_meta

__all__ = ["Trial", "Session", "TuringApp"]

log = logging.getLogger(__name__)


@dataclass
class Trial:
    trial_id: str
    rater: str
    session: str
    image_id: str
    is_sentinel: bool
    left_is_real: bool
    left: str
    right: str
    answered: bool = False


@dataclass
class Session:
    session_id: str
    rater: str
    trials: list[Trial] = field(default_factory=list)
    position: int = 0

    @property
    def done(self) -> bool:
        return self.position >= len(self.trials)


def _check_settings(trials: int, sentinel_fraction: float, seconds: float, items: Sequence[ImageItem]) -> None:
    if trials < 1:
        raise UserError(f"trials must be >= 1, got {trials}")
    if not 0.0 <= sentinel_fraction <= 1.0:
        raise UserError(f"sentinel fraction must be in [0, 1], got {sentinel_fraction}")
    if seconds <= 0:
        raise UserError(f"seconds must be > 0, got {seconds}")
    if not items:
        raise UserError("no images to show")


class TuringApp:
    """Trials, sessions and the answer log behind the HTTP handler (thread-safe)."""

    def __init__(self, db_path: str | Path, items: Sequence[ImageItem], cache_dir: str | Path, method: str,
                 *, trials: int = 40, sentinel_fraction: float = 0.1, seconds: float = 1.0,
                 seed: int | None = None, meta: dict[str, Any] | None = None) -> None:
        _check_settings(trials, sentinel_fraction, seconds, items)
        self.items, self.cache_dir, self.method = list(items), Path(cache_dir), method
        self.trials, self.sentinel_fraction, self.seconds = trials, sentinel_fraction, seconds
        self.images = {n for it in self.items for n in (it.real, it.fake, it.sentinel)}
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.sessions: dict[str, Session] = {}  # rater -> current session
        self.by_id: dict[str, Trial] = {}
        self.db_path = Path(db_path)
        self.db = open_db(self.db_path)
        with self.lock:
            write_meta(self.db, {"method": method, **(meta or {})})

    def n_sentinels(self) -> int:
        if self.sentinel_fraction <= 0:
            return 0
        return min(self.trials, max(1, round(self.trials * self.sentinel_fraction)))

    def _method_images(self, n: int) -> list[ImageItem]:
        """n images for the method trials: each image once before any repeats."""
        pool: list[ImageItem] = []
        while len(pool) < n:
            batch = list(self.items)
            self.rng.shuffle(batch)
            pool += batch
        return pool[:n]

    def _new_session(self, rater: str) -> Session:
        sid = secrets.token_hex(6)
        n_sent = self.n_sentinels()
        n_method = self.trials - n_sent
        kinds = [False] * n_method + [True] * n_sent
        self.rng.shuffle(kinds)
        method_iter = iter(self._method_images(n_method))
        s = Session(sid, rater)
        for k, sentinel in enumerate(kinds):
            it = self.rng.choice(self.items) if sentinel else next(method_iter)
            other = it.sentinel if sentinel else it.fake
            left_is_real = self.rng.random() < 0.5
            left, right = (it.real, other) if left_is_real else (other, it.real)
            t = Trial(f"{sid}-{k:03d}", rater, sid, it.image_id, sentinel, left_is_real, left, right)
            s.trials.append(t)
            self.by_id[t.trial_id] = t
        self.sessions[rater] = s
        return s

    def next_trial(self, rater: str) -> dict[str, Any]:
        with self.lock:
            s = self.sessions.get(rater)
            if s is None or s.done:
                s = self._new_session(rater)
            t = s.trials[s.position]
            return {"trial_id": t.trial_id, "left_url": f"/images/{t.left}", "right_url": f"/images/{t.right}",
                    "seconds": self.seconds, "index": s.position + 1, "total": len(s.trials)}

    def _refusal(self, rater: str, t: Trial | None) -> tuple[int, dict] | None:
        """(HTTP status, JSON reply) when ``t`` is not a trial this rater may answer now."""
        if t is None or t.rater != rater:
            return 404, {"ok": False, "error": "unknown trial for this rater"}
        if t.answered:
            return 409, {"ok": False, "error": "trial already answered"}
        s = self.sessions.get(rater)
        if s is None or s.session_id != t.session or s.done or s.trials[s.position] is not t:
            return 409, {"ok": False, "error": "not the current trial of this rater"}
        return None

    def answer(self, rater: str, trial_id: str, chose: str, response_ms: float | None) -> tuple[int, dict]:
        """(HTTP status, JSON reply). The row is committed before the reply is sent."""
        if chose not in ("left", "right"):
            return 400, {"ok": False, "error": "chose must be 'left' or 'right'"}
        with self.lock:
            t = self.by_id.get(trial_id)
            refusal = self._refusal(rater, t)
            if refusal is not None:
                return refusal
            try:
                insert_answer(self.db, Answer(rater, t.session, t.trial_id, t.image_id, self.method,
                                              t.is_sentinel, t.left_is_real, chose == "left", response_ms))
            except sqlite3.Error as e:
                # rolled back: the trial stays current, so the page's retry (or the next rater) can still land
                log.error("answer of rater %s to trial %s not stored: %s: %s", rater, trial_id,
                          type(e).__name__, e)
                return 500, {"ok": False, "error": "the answer could not be saved (database error); please retry"}
            t.answered = True
            s = self.sessions[rater]
            s.position += 1
            return 200, {"ok": True, "done": s.done}

    def close(self) -> None:
        with self.lock:
            self.db.close()
