"""The study's HTTP server: the page, its static files, the cached pictures and the JSON API.

Bound to 127.0.0.1 only. Pictures are served by exact known name, static files by exact name in
``static/``: nothing else on disk is reachable, whatever the request path holds.
"""

from __future__ import annotations

import errno
import json
import logging
import mimetypes
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ssl_bench.colorization.study import UserError
from ssl_bench.colorization.study.payload import BadRequest, body_length, check_rater, parse_answer
from ssl_bench.colorization.study.sessions import TuringApp

__all__ = ["HOST", "STATIC_DIR", "TuringServer", "bind_server"]

HOST = "127.0.0.1"
STATIC_DIR = Path(__file__).resolve().parent / "static"
_IMAGE_RE = re.compile(r"[A-Za-z0-9_-]{1,80}\.png")  # fullmatch: ``$`` would also accept a trailing newline
log = logging.getLogger(__name__)


def _static_files() -> set[str]:
    return {p.name for p in STATIC_DIR.iterdir() if p.is_file()} if STATIC_DIR.is_dir() else set()


class _Handler(BaseHTTPRequestHandler):
    server_version = "ssl-bench-turing/1"
    server: "TuringServer"
    timeout = 30  # seconds: a client that stops sending mid-request frees its thread

    def log_message(self, fmt: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(fmt, *args)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _static(self, name: str) -> None:
        if name not in _static_files():
            self._json(404, {"ok": False, "error": "not found"})
            return
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        self._send(200, (STATIC_DIR / name).read_bytes(), ctype)

    def _image(self, app: TuringApp, name: str) -> None:
        if not _IMAGE_RE.fullmatch(name) or "/" in name or "\\" in name:
            self._json(403, {"ok": False, "error": "refused"})
        elif name not in app.images or not (app.cache_dir / name).is_file():
            self._json(404, {"ok": False, "error": "not found"})
        else:
            self._send(200, (app.cache_dir / name).read_bytes(), "image/png")

    def _trial(self, app: TuringApp, query: str) -> None:
        try:
            rater = check_rater(parse_qs(query).get("rater", [""])[0])
        except BadRequest as e:
            self._json(e.status, e.reply())
            return
        self._json(200, app.next_trial(rater))

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        app = self.server.app
        url = urlsplit(self.path)
        path = url.path
        if app is None:
            self._json(503, {"ok": False, "error": "images are still being prepared"})
        elif path in ("/", "/index.html"):
            self._static("index.html")
        elif path.startswith("/static/"):
            self._static(unquote(path[len("/static/"):]))
        elif path.startswith("/images/"):
            self._image(app, unquote(path[len("/images/"):]))
        elif path == "/api/trial":
            self._trial(app, url.query)
        else:
            self._json(404, {"ok": False, "error": "not found"})

    do_HEAD = do_GET

    def _body(self) -> bytes:
        """The request body, at most MAX_BODY_BYTES (anything larger is refused unread)."""
        n = body_length(self.headers.get("Content-Length"))
        try:
            raw = self.rfile.read(n)
        except TimeoutError:
            raise BadRequest("body: not received in time", status=408) from None
        if len(raw) < n:
            raise BadRequest(f"body: {len(raw)} of {n} announced bytes received")
        return raw

    def _answer(self, app: TuringApp) -> None:
        try:
            req = parse_answer(self._body())
        except BadRequest as e:
            self.close_connection = True  # an unread or half-read body must not be taken for the next request
            self._json(e.status, e.reply())
            return
        self._json(*app.answer(req.rater, req.trial_id, req.chose, req.response_ms))

    def do_POST(self) -> None:  # noqa: N802
        app = self.server.app
        if app is None:
            self._json(503, {"ok": False, "error": "not ready"})
        elif urlsplit(self.path).path != "/api/answer":
            self._json(404, {"ok": False, "error": "not found"})
        else:
            try:
                self._answer(app)
            except OSError:  # the client went away mid-reply: nobody is left to tell
                self.close_connection = True
            except Exception as e:  # one failing request must not end the rater's session with no reply
                log.exception("POST %s failed", self.path)
                self._json(500, {"ok": False, "error": f"internal error ({type(e).__name__})"})


class TuringServer(ThreadingHTTPServer):
    """Answers 503 until ``app`` is set, so the port can be held while the pictures are prepared."""

    daemon_threads = True
    request_queue_size = 128  # many raters at once: the default backlog of 5 drops connections under load
    app: TuringApp | None = None
    verbose: bool = False


def bind_server(port: int, host: str = HOST) -> TuringServer:
    """Bind now (before any heavy work); UserError naming the port when it is taken."""
    try:
        return TuringServer((host, port), _Handler)
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EACCES):
            why = "already in use" if e.errno == errno.EADDRINUSE else "not allowed"
            raise UserError(f"port {port} is {why} on {host}; choose another with --port") from e
        raise
