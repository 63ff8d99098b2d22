"""Atomic file writes: the one way the suite writes a result, a checkpoint, a table or an image.

A file is written to a temporary name in the destination folder, flushed to disk, then renamed over
the destination with ``os.replace`` (a rename within one file system): a reader sees the old file
or the new one, never half of one, and a killed or failing write leaves no partial file behind.
Torch-free, so light commands import it cheaply.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_writer(path: str | Path, mode: str = "wb", mode_bits: int = 0o644) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``, else it is removed.

    ``mode`` is ``"wb"`` or ``"w"`` (text is always UTF-8). ``mode_bits``: mkstemp creates 0600, while
    results and figures are meant to be read by others.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_writer: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode_bits)
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_writer(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_writer(path, "w") as f:
        f.write(text)
    return Path(path)
