"""The paper's perceptual real-vs-fake test ("colorization Turing test"), run by people on a local web page.

    ssl-bench turing-test --checkpoint CKPT --data DIR [--port 8765] [--db answers.sqlite]
                          [--trials 40] [--sentinel-fraction 0.1] [--seconds 1.0]
    ssl-bench turing-test results --db answers.sqlite [--out results.json] [--min-sentinel-accuracy 1.0]

(``key=value`` forms such as ``checkpoint=... data=...`` are accepted as well.)

Serving. A stdlib ``ThreadingHTTPServer`` bound to 127.0.0.1 serves one page. Each trial shows a real
image and its colorization side by side for ``--seconds`` (paper: 1 s) in random left/right order,
hides them and asks which one is real (buttons, or the keys F / left arrow and J / right arrow). The
server alone knows which side is real; image URLs are opaque random names.

Sentinels. About ``--sentinel-fraction`` (paper: ~10%) of the trials show the ground truth next to
the same image in *random colours*: its L channel with the ab channels of another randomly chosen
image of the set (resized to the same 256 x 256 crop); when the set holds a single image, its own ab
rotated in the ab plane by a random hue angle in [90, 270] degrees instead. A rater who gets
sentinels wrong was not paying attention; ``results`` drops such raters.

Images. Prepared once at start-up into ``<db stem>_images/`` next to the db: every image below
``--data`` (recursively; unreadable files are skipped with a message naming them) is resized to a
256 px short side and centre-cropped to 256 x 256 (the paper showed 256 x 256), then written as PNG
three times: ground truth, colorization, sentinel.

Answers. Each answer is one INSERT + COMMIT into the SQLite file (WAL mode) as it arrives, so
stopping or killing the server loses nothing. Rows: rater (random id kept in the page's
localStorage), session, trial id, image id (path relative to --data), method (the checkpoint's
"colorization/<variant>"), is_sentinel, left_is_real, chose_left, correct (chose the real image),
response_ms (from the moment the images were hidden to the click), timestamp (UTC, ISO 8601).

HTTP API (JSON):
    GET  /                          the page (static files in turing_static/)
    GET  /api/trial?rater=R         next trial {trial_id, left_url, right_url, seconds, index, total}
    POST /api/answer                {rater, trial_id, chose: "left"|"right", response_ms} -> {"ok", "done"}
    GET  /images/<name>.png         a cached PNG (anything but a known plain file name is refused)

A session is ``--trials`` trials (sentinels mixed in at random positions); a rater asking for a trial
after finishing a session starts a new one.

Results. "% labelled real": over the method's (non-sentinel) trials of the kept raters, the share in
which the rater chose the colorization as the real image (pooled over trials); its standard error is
a bootstrap over raters (raters resampled with replacement, 1000 draws, fixed seed). Raters whose
sentinel accuracy is below ``--min-sentinel-accuracy`` (paper: all sentinels right, 1.0) are
excluded; so are raters who answered no sentinel at all, unless the threshold is 0.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import mimetypes
import random
import re
import secrets
import signal
import sqlite3
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
from ssl_bench.io import atomic_writer

PROG = "ssl-bench turing-test"
HOST = "127.0.0.1"
STATIC_DIR = Path(__file__).resolve().parent / "study_static"
IMAGE_SIZE = 256
DEFAULT_T = 0.38  # the paper's annealed-mean temperature
BOOTSTRAP_DRAWS = 1000
BOOTSTRAP_SEED = 0
_RATER_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_IMAGE_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}\.png$")

__all__ = ["ImageItem", "TuringApp", "bind_server", "prepare_images", "summarize", "turing_results_main",
           "turing_test_main"]


class UserError(ValueError):
    """Bad input from the command line (reported in one line, exit code 2)."""


# --------------------------------------------------------------------------- command line


def _key_value_to_flags(argv: Sequence[str], known: set[str]) -> list[str]:
    """``checkpoint=x`` / ``sentinel_fraction=0.2`` -> ``--checkpoint x`` / ``--sentinel-fraction 0.2``."""
    out: list[str] = []
    for tok in argv:
        if not tok.startswith("-") and "=" in tok:
            key, value = tok.split("=", 1)
            flag = key.strip().replace("_", "-")
            if flag in known:
                out += [f"--{flag}", value]
                continue
        out.append(tok)
    return out


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    known = {s[2:] for a in parser._actions for s in a.option_strings if s.startswith("--")}
    return parser.parse_args(_key_value_to_flags(argv, known))


def _test_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Serve the real-vs-fake colorization test "
                                "(the paper's AMT test) on a local web page; answers go to SQLite. "
                                f"'{PROG} results --db FILE' summarises the answers.")
    p.add_argument("--checkpoint", required=True, help="colorization checkpoint (suite format)")
    p.add_argument("--data", required=True, help="folder of images (searched recursively)")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free port)")
    p.add_argument("--db", default="answers.sqlite", help="SQLite file receiving the answers")
    p.add_argument("--trials", type=int, default=40, help="trials per session (paper: 40)")
    p.add_argument("--sentinel-fraction", type=float, default=0.1, help="share of sentinel trials")
    p.add_argument("--seconds", type=float, default=1.0, help="how long the pair is shown")
    p.add_argument("--temperature", type=float, default=DEFAULT_T, help="annealed-mean T of the colorizer")
    p.add_argument("--seed", type=int, default=0, help="seed of the sentinel colours")
    p.add_argument("--verbose", action="store_true", help="log every HTTP request")
    return p


def _results_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} results", description="Summarise Turing-test answers: "
                                "% of method trials in which the colorization was labelled real.")
    p.add_argument("--db", required=True, help="SQLite file written by the server")
    p.add_argument("--out", default=None, help="results.json to write (default: next to the db)")
    p.add_argument("--min-sentinel-accuracy", type=float, default=1.0,
                   help="raters below this accuracy on sentinels are excluded (paper: 1.0)")
    p.add_argument("--method", default=None, help="method to report when the db holds several")
    return p


def _error(msg: Any) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 2


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageItem:
    """One source image: its id (path below --data) and the cache file names of its three versions."""

    image_id: str
    real: str
    fake: str
    sentinel: str


def _square_crop(path: Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 size x size x 3: short side resized to ``size`` (bicubic), then centre-cropped."""
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = size / min(w, h)
        nw, nh = max(size, round(w * s)), max(size, round(h * s))
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size))).copy()


def _write_png(arr: np.ndarray, path: str | Path) -> None:
    from PIL import Image
    with atomic_writer(path) as f:
        Image.fromarray(arr).save(f, format="PNG")


def _sentinel_images(crops: list[np.ndarray], rng: random.Random) -> list[np.ndarray]:
    """Each crop's L with random colours: ab of another random crop, or (single image) a hue rotation."""
    import torch
    from ssl_bench import color
    lab = color.rgb_to_lab(torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous())
    out = []
    for i in range(len(crops)):
        if len(crops) > 1:
            j = rng.choice([k for k in range(len(crops)) if k != i])
            ab = lab[j, 1:]
        else:
            theta = np.deg2rad(rng.uniform(90.0, 270.0))
            c, s = float(np.cos(theta)), float(np.sin(theta))
            a, b = lab[i, 1], lab[i, 2]
            ab = torch.stack([c * a - s * b, s * a + c * b])
        rgb = color.lab_to_rgb(torch.cat([lab[i, :1], ab], 0)[None].double())[0]
        out.append(_to_uint8_hwc(rgb))
    return out


def _to_uint8_hwc(x: Any) -> np.ndarray:
    """A colorizer's output (tensor or array; CHW or HWC; float in [0,1] or uint8) as uint8 H x W x 3."""
    import torch
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 4:
        x = x[0]
    if x.shape[0] == 3 and x.shape[-1] != 3:
        x = x.transpose(1, 2, 0)
    if x.dtype != np.uint8:
        x = np.clip(np.rint(x.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x)


def read_colorization_meta(checkpoint: str | Path) -> dict[str, Any]:
    """The checkpoint's ssl_bench meta; UserError unless it is a suite colorization checkpoint."""
    from ssl_bench.models.checkpoint import read_checkpoint
    ckpt = read_checkpoint(checkpoint)
    meta = ckpt.get("ssl_bench")
    if not isinstance(meta, dict) or "trunk" not in meta:
        raise UserError(f"checkpoint {checkpoint} was not written by ssl_bench (no 'ssl_bench' entry)")
    if meta.get("pretext") != "colorization":
        raise UserError(f"checkpoint {checkpoint} is a {meta.get('pretext')!r} model, not a colorization "
                        "model; the Turing test needs a checkpoint of pretext=colorization")
    return meta


def _method(meta: dict[str, Any]) -> str:
    return f"colorization/{meta['variant']}" if meta.get("variant") else "colorization"


def _colorize_files(checkpoint: str | Path, items: Sequence[tuple[np.ndarray, Path]],
                    T: float = DEFAULT_T) -> str:
    """Colorize each uint8 H x W x 3 crop with the suite's colorizer (annealed mean at temperature T,
    the image's own L kept) and write the result as PNG at its path; returns the backend's name."""
    import torch

    from ssl_bench.colorization.colorize import colorize_image, load_colorizer
    model = load_colorizer(checkpoint)
    for img, path in items:
        rgb, _ = colorize_image(model, torch.from_numpy(img).permute(2, 0, 1).contiguous(), "annealed_mean", T)
        _write_png(_to_uint8_hwc(rgb), path)
    return "ssl_bench.colorization.colorize"


def prepare_images(data: str | Path, checkpoint: str | Path, cache_dir: str | Path, *,
                   T: float = DEFAULT_T, seed: int = 0, log: Any = print) -> list[ImageItem]:
    """Ground truth, colorization and sentinel PNGs of every readable image below ``data``."""
    from ssl_bench.data.images import DECODE_ERRORS, list_images
    data, cache = Path(data), Path(cache_dir)
    paths = list_images(data)
    if not paths:
        raise UserError(f"--data {data} holds no images")
    crops, ids = [], []
    for p in paths:
        try:
            crops.append(_square_crop(p))
        except DECODE_ERRORS as e:
            log(f"{PROG}: skipping unreadable image {p}: {e}", file=sys.stderr)
            continue
        ids.append(p.relative_to(data).as_posix())
    if not crops:
        raise UserError(f"--data {data}: none of its {len(paths)} image(s) could be read")
    cache.mkdir(parents=True, exist_ok=True)
    for old in cache.glob("*.png"):
        old.unlink()
    salt = secrets.token_hex(8)  # opaque names: a URL never tells which side is real

    def name(image_id: str, kind: str) -> str:
        return hashlib.sha256(f"{salt}/{image_id}/{kind}".encode()).hexdigest()[:20] + ".png"

    items = [ImageItem(i, name(i, "real"), name(i, "fake"), name(i, "sentinel")) for i in ids]
    for crop, it in zip(crops, items):
        _write_png(crop, cache / it.real)
    backend = _colorize_files(checkpoint, [(c, cache / it.fake) for c, it in zip(crops, items)], T)
    for arr, it in zip(_sentinel_images(crops, random.Random(seed)), items):
        _write_png(arr, cache / it.sentinel)
    manifest = {"data": str(data), "checkpoint": str(checkpoint), "temperature": T, "colorizer": backend,
                "images": [it.__dict__ for it in items]}
    (cache / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    log(f"{PROG}: prepared {len(items)} image(s) in {cache} (colorizer: {backend})")
    return items


# --------------------------------------------------------------------------- answers database

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


def open_db(path: str | Path) -> sqlite3.Connection:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.executescript(SCHEMA)
    return con


# --------------------------------------------------------------------------- trials and server state


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


class TuringApp:
    """Trials, sessions and the answer log behind the HTTP handler (thread-safe)."""

    def __init__(self, db_path: str | Path, items: Sequence[ImageItem], cache_dir: str | Path, method: str,
                 *, trials: int = 40, sentinel_fraction: float = 0.1, seconds: float = 1.0,
                 seed: int | None = None, meta: dict[str, Any] | None = None) -> None:
        if trials < 1:
            raise UserError(f"--trials must be >= 1, got {trials}")
        if not 0.0 <= sentinel_fraction <= 1.0:
            raise UserError(f"--sentinel-fraction must be in [0, 1], got {sentinel_fraction}")
        if seconds <= 0:
            raise UserError(f"--seconds must be > 0, got {seconds}")
        if not items:
            raise UserError("no images to show")
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
            for k, v in {"method": method, **(meta or {})}.items():
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, str(v)))

    def n_sentinels(self) -> int:
        if self.sentinel_fraction <= 0:
            return 0
        return min(self.trials, max(1, round(self.trials * self.sentinel_fraction)))

    def _new_session(self, rater: str) -> Session:
        sid = secrets.token_hex(6)
        n_sent = self.n_sentinels()
        n_method = self.trials - n_sent
        pool: list[ImageItem] = []
        while len(pool) < n_method:  # each image once before any repeats
            batch = list(self.items)
            self.rng.shuffle(batch)
            pool += batch
        kinds = [False] * n_method + [True] * n_sent
        self.rng.shuffle(kinds)
        method_iter = iter(pool[:n_method])
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

    def answer(self, rater: str, trial_id: str, chose: str, response_ms: float | None) -> tuple[int, dict]:
        """(HTTP status, JSON reply). The row is committed before the reply is sent."""
        if chose not in ("left", "right"):
            return 400, {"ok": False, "error": "chose must be 'left' or 'right'"}
        with self.lock:
            t = self.by_id.get(trial_id)
            if t is None or t.rater != rater:
                return 404, {"ok": False, "error": "unknown trial for this rater"}
            if t.answered:
                return 409, {"ok": False, "error": "trial already answered"}
            s = self.sessions.get(rater)
            if s is None or s.session_id != t.session or s.done or s.trials[s.position] is not t:
                return 409, {"ok": False, "error": "not the current trial of this rater"}
            chose_left = chose == "left"
            now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
            self.db.execute("BEGIN")
            self.db.execute(
                "INSERT INTO answers (rater, session, trial_id, image_id, method, is_sentinel, left_is_real,"
                " chose_left, correct, response_ms, timestamp) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (rater, t.session, t.trial_id, t.image_id, self.method, int(t.is_sentinel), int(t.left_is_real),
                 int(chose_left), int(chose_left == t.left_is_real), response_ms, now))
            self.db.execute("COMMIT")
            t.answered = True
            s.position += 1
            return 200, {"ok": True, "done": s.done}

    def close(self) -> None:
        with self.lock:
            self.db.close()


class _Handler(BaseHTTPRequestHandler):
    server_version = "ssl-bench-turing/1"
    server: "TuringServer"

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
        path = STATIC_DIR / name
        if name not in _static_files():
            self._json(404, {"ok": False, "error": "not found"})
            return
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        self._send(200, path.read_bytes(), ctype)

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
            name = unquote(path[len("/images/"):])
            if not _IMAGE_RE.match(name) or "/" in name or "\\" in name:
                self._json(403, {"ok": False, "error": "refused"})
            elif name not in app.images or not (app.cache_dir / name).is_file():
                self._json(404, {"ok": False, "error": "not found"})
            else:
                self._send(200, (app.cache_dir / name).read_bytes(), "image/png")
        elif path == "/api/trial":
            rater = parse_qs(url.query).get("rater", [""])[0]
            if not _RATER_RE.match(rater):
                self._json(400, {"ok": False, "error": "rater: 1-64 characters of [A-Za-z0-9_-]"})
            else:
                self._json(200, app.next_trial(rater))
        else:
            self._json(404, {"ok": False, "error": "not found"})

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        app = self.server.app
        if app is None:
            self._json(503, {"ok": False, "error": "not ready"})
            return
        if urlsplit(self.path).path != "/api/answer":
            self._json(404, {"ok": False, "error": "not found"})
            return
        try:
            n = int(self.headers.get("Content-Length", "0"))
            if not 0 < n <= 10_000:
                raise ValueError("body size")
            body = json.loads(self.rfile.read(n))
            rater, trial_id, chose = str(body["rater"]), str(body["trial_id"]), body["chose"]
            ms = body.get("response_ms")
            ms = None if ms is None else float(ms)
        except (ValueError, KeyError, TypeError) as e:
            self._json(400, {"ok": False, "error": f"bad request: {e}"})
            return
        status, reply = app.answer(rater, trial_id, chose, ms)
        self._json(status, reply)


def _static_files() -> set[str]:
    return {p.name for p in STATIC_DIR.iterdir() if p.is_file()} if STATIC_DIR.is_dir() else set()


class TuringServer(ThreadingHTTPServer):
    daemon_threads = True
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


def turing_test_main(argv: Sequence[str]) -> int:
    """``ssl-bench turing-test ...``: serve the test until Ctrl-C / SIGTERM; ``results`` summarises."""
    argv = list(argv)
    if argv and argv[0] == "results":
        return turing_results_main(argv[1:])
    args = _parse(_test_parser(), argv)
    from ssl_bench.models.checkpoint import CheckpointMismatchError
    try:
        if not Path(args.checkpoint).is_file():
            raise UserError(f"--checkpoint {args.checkpoint} does not exist")
        if not Path(args.data).is_dir():
            raise UserError(f"--data {args.data} is not a folder")
        httpd = bind_server(args.port)
    except UserError as e:
        return _error(e)
    app = None
    try:
        try:
            meta = read_colorization_meta(args.checkpoint)
            db = Path(args.db)
            cache = db.with_name(db.stem + "_images")
            items = prepare_images(args.data, args.checkpoint, cache, T=args.temperature, seed=args.seed)
            app = TuringApp(db, items, cache, _method(meta), trials=args.trials,
                            sentinel_fraction=args.sentinel_fraction, seconds=args.seconds,
                            meta={"checkpoint": Path(args.checkpoint).resolve(),
                                  "data": Path(args.data).resolve(), "temperature": args.temperature})
        except (UserError, CheckpointMismatchError, FileNotFoundError) as e:
            return _error(e)
        httpd.app, httpd.verbose = app, args.verbose
        port = httpd.server_address[1]
        print(f"{PROG}: {app.method}: {len(items)} image(s), {args.trials} trials per session "
              f"({app.n_sentinels()} sentinels), answers -> {db}", flush=True)
        print(f"{PROG}: serving on http://{HOST}:{port}/  (Ctrl-C to stop)", flush=True)

        def stop(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt
        # both signals explicitly: a process started in the background inherits SIGINT as ignored
        signals = (signal.SIGTERM, signal.SIGINT)
        main = threading.current_thread() is threading.main_thread()
        old = {sig: signal.signal(sig, stop) for sig in signals} if main else {}
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        n = app.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        print(f"{PROG}: stopped; {n} answer(s) in {db}", flush=True)
        return 0
    finally:
        httpd.server_close()
        if app is not None:
            app.close()


# --------------------------------------------------------------------------- results


def _bootstrap_se(per_rater: list[tuple[int, int]], draws: int = BOOTSTRAP_DRAWS,
                  seed: int = BOOTSTRAP_SEED) -> float:
    """SE (percent) of the pooled rate sum(k)/sum(n), raters resampled with replacement."""
    if len(per_rater) < 2:
        return 0.0
    k = np.array([a for a, _ in per_rater], dtype=np.float64)
    n = np.array([b for _, b in per_rater], dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(k), size=(draws, len(k)))
    rates = 100.0 * k[idx].sum(1) / n[idx].sum(1)
    return float(rates.std(ddof=1))


def summarize(rows: Sequence[dict[str, Any]], min_sentinel_accuracy: float = 1.0) -> dict[str, Any]:
    """Rater screening and "% labelled real" of the answer rows (dicts with the answers columns)."""
    raters: dict[str, dict[str, int]] = {}
    for r in rows:
        d = raters.setdefault(r["rater"], {"sent": 0, "sent_ok": 0, "trials": 0, "real": 0})
        if r["is_sentinel"]:
            d["sent"] += 1
            d["sent_ok"] += int(r["correct"])
        else:
            d["trials"] += 1
            d["real"] += int(not r["correct"])  # chose the colorization as the real one
    kept, excluded = [], {}
    for name, d in sorted(raters.items()):
        if d["sent"] == 0 and min_sentinel_accuracy > 0:
            excluded[name] = "answered no sentinel"
        elif d["sent"] and d["sent_ok"] / d["sent"] < min_sentinel_accuracy:
            excluded[name] = f"sentinel accuracy {d['sent_ok']}/{d['sent']}"
        elif d["trials"] == 0:
            excluded[name] = "answered no method trial"
        else:
            kept.append(name)
    per = [(raters[n]["real"], raters[n]["trials"]) for n in kept]
    trials = sum(n for _, n in per)
    sent = sum(raters[n]["sent"] for n in kept)
    return {
        "amt_real": 100.0 * sum(k for k, _ in per) / trials if trials else None,
        "amt_real_se": _bootstrap_se(per) if trials else None,
        "raters_kept": kept, "raters_excluded": excluded, "trials": trials,
        "sentinel_trials": sent,
        "sentinel_accuracy": 100.0 * sum(raters[n]["sent_ok"] for n in kept) / sent if sent else None,
    }


def read_answers(db: str | Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    db = Path(db)
    if not db.is_file():
        raise UserError(f"--db {db} does not exist")
    con = sqlite3.connect(db)
    try:
        con.row_factory = sqlite3.Row
        try:
            rows = [dict(r) for r in con.execute("SELECT * FROM answers ORDER BY id")]
            meta = {r["key"]: r["value"] for r in con.execute("SELECT key, value FROM meta")}
        except sqlite3.DatabaseError as e:
            raise UserError(f"--db {db} is not a Turing-test answers file: {e}") from e
    finally:
        con.close()
    return rows, meta


def turing_results_main(argv: Sequence[str]) -> int:
    """``ssl-bench turing-test results --db FILE``: write results.json (kind colorization_eval)."""
    from ssl_bench.report.results import write_results
    args = _parse(_results_parser(), argv)
    try:
        if not 0.0 <= args.min_sentinel_accuracy <= 1.0:
            raise UserError(f"--min-sentinel-accuracy must be in [0, 1], got {args.min_sentinel_accuracy}")
        rows, meta = read_answers(args.db)
        methods = sorted({r["method"] for r in rows})
        if not rows:
            raise UserError(f"--db {args.db} holds no answers yet")
        if args.method:
            if args.method not in methods:
                raise UserError(f"--method {args.method} not in the db (it has {', '.join(methods)})")
            method = args.method
        elif len(methods) > 1:
            raise UserError(f"--db {args.db} holds several methods ({', '.join(methods)}); pick one with --method")
        else:
            method = methods[0]
    except UserError as e:
        return _error(e)
    s = summarize([r for r in rows if r["method"] == method], args.min_sentinel_accuracy)
    if not s["trials"]:
        print(f"{PROG} results: no rater passed the sentinel screen ({len(s['raters_excluded'])} excluded: "
              + "; ".join(f"{k}: {v}" for k, v in s["raters_excluded"].items()) + ")", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else Path(args.db).with_name("results.json")
    metrics = {"color/amt_real": s["amt_real"], "color/amt_real_se": s["amt_real_se"],
               "color/amt_raters": len(s["raters_kept"]), "color/amt_raters_excluded": len(s["raters_excluded"]),
               "color/amt_trials": s["trials"], "color/amt_sentinel_trials": s["sentinel_trials"],
               "color/amt_sentinel_accuracy": s["sentinel_accuracy"]}
    record = {"kind": "colorization_eval", "task": "turing_test", "method": method, "status": "completed", "protocol": "turing_test",
              "metrics": metrics,
              "dataset": {"name": "turing_test", "root": meta.get("data")},
              "checkpoint": meta.get("checkpoint"),
              "raters": {"kept": s["raters_kept"], "excluded": s["raters_excluded"]},
              "config": {"db": str(Path(args.db).resolve()), "min_sentinel_accuracy": args.min_sentinel_accuracy,
                         "bootstrap_draws": BOOTSTRAP_DRAWS, "bootstrap_seed": BOOTSTRAP_SEED,
                         "temperature": meta.get("temperature")}}
    write_results(out, record)
    print(f"{PROG} results: {method}: {s['amt_real']:.1f}% +- {s['amt_real_se']:.1f} labelled real "
          f"({len(s['raters_kept'])} rater(s) kept, {len(s['raters_excluded'])} excluded, {s['trials']} trials)")
    print(f"{PROG} results: written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(turing_test_main(sys.argv[1:]))
