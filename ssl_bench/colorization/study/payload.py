"""Checks on what raters send: the rater id, and the answer's JSON body (size, nesting, fields).

Everything is refused with a ``BadRequest`` naming the field, never repaired: a rater id with a stray
newline is not silently made into another rater's id, and a response time that is not a finite,
non-negative number of milliseconds never reaches the answer log.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_BODY_BYTES", "MAX_NESTING", "BadRequest", "AnswerRequest", "check_rater", "body_length",
           "json_nesting", "parse_answer"]

MAX_BODY_BYTES = 10_000
# the answer is one flat object (depth 1); the slack only spares clients that wrap it once more
MAX_NESTING = 4
# always used with fullmatch: with ``match`` a pattern ending in ``$`` also accepts a trailing newline
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ID_RULE = "1-64 characters of [A-Za-z0-9_-]"


class BadRequest(ValueError):
    """A request refused as sent: HTTP ``status`` and, where one is to blame, the ``field``."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.field, self.status = field, status

    def reply(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": False, "error": str(self)}
        if self.field is not None:
            out["field"] = self.field
        return out


@dataclass(frozen=True)
class AnswerRequest:
    rater: str
    trial_id: str
    chose: str
    response_ms: float | None


def _check_id(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise BadRequest(f"{field}: {_ID_RULE} (got {value!r:.80})", field=field)
    return value


def check_rater(value: Any) -> str:
    """The rater id as sent, or BadRequest naming the ``rater`` field."""
    return _check_id(value, "rater")


def body_length(header: str | None) -> int:
    """The body size announced by Content-Length; BadRequest when missing, malformed or too large."""
    try:
        n = int(header or "")
    except ValueError:
        raise BadRequest("body: a Content-Length header with the body size is required") from None
    if n <= 0:
        raise BadRequest("body: empty")
    if n > MAX_BODY_BYTES:
        raise BadRequest(f"body: {n} bytes, at most {MAX_BODY_BYTES} accepted", status=413)
    return n


def json_nesting(text: str) -> int:
    """The deepest nesting of [] / {} in JSON text (brackets inside strings not counted)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> float:
    raise BadRequest(f"body: {name} is not a JSON number")


def _load_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; nesting is measured first because the parser recurses per level."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body: not UTF-8 text") from None
    if json_nesting(text) > MAX_NESTING:
        raise BadRequest(f"body: JSON nested deeper than {MAX_NESTING} levels")
    try:
        obj = json.loads(text, parse_constant=_refuse_constant)
    except BadRequest:  # NaN / Infinity, refused by _refuse_constant
        raise
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"body: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise BadRequest("body: a JSON object is required")
    return obj


def _response_ms(value: Any) -> float | None:
    """None, or a finite non-negative number (JSON booleans are not numbers here)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"response_ms: a number of milliseconds is required (got {value!r:.40})",
                         field="response_ms")
    try:
        ms = float(value)
    except OverflowError:  # an integer literal beyond the float range
        ms = math.inf
    if not math.isfinite(ms) or ms < 0:
        raise BadRequest(f"response_ms: must be finite and >= 0 (got {ms})", field="response_ms")
    return ms


def parse_answer(raw: bytes) -> AnswerRequest:
    """The checked fields of a POST /api/answer body; BadRequest on the first problem found."""
    body = _load_object(raw)
    for name in ("rater", "trial_id", "chose"):
        if name not in body:
            raise BadRequest(f"{name}: missing", field=name)
    rater, trial_id, chose = check_rater(body["rater"]), _check_id(body["trial_id"], "trial_id"), body["chose"]
    if chose not in ("left", "right"):
        raise BadRequest(f"chose: must be 'left' or 'right' (got {chose!r:.40})", field="chose")
    return AnswerRequest(rater, trial_id, chose, _response_ms(body.get("response_ms")))
