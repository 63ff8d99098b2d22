"""Memory-mapped float16 feature cache, so lr sweeps, kNN and SVMs reuse one trunk pass.

A cache entry is a folder keyed by (trunk weights, transform, split, dataset fingerprint); inside it
one file per layer. The trunk is identified by a hash of its weights and batch-norm statistics, so
features of a different checkpoint are never reused even if it has the same file name.

An entry is written in a temporary folder ``.<key>.<pid>@<host>.<random>`` beside it, then renamed
into place. A writer that was killed leaves its temporary folder behind (as large as the entry):
the next write under the same root removes those of writers that are gone (their process no longer
runs on this host) once they are a minute old.

Several processes asking for the same entry at once (the ranks of a DDP probe, which extract before
Lightning's process group exists, or two jobs sharing a cache) take a file lock on the entry
(``<root>/locks/<key>.lock``, an empty file that stays): the first extracts and writes, the others
wait for it, then all read the one entry (:func:`load_or_extract`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ssl_bench.data.decoded_cache import preallocated_memmap


def trunk_fingerprint(trunk: nn.Module) -> str:
    """sha256 of every tensor of the state dict (weights and running statistics), in key order."""
    h = hashlib.sha256()
    for k, v in sorted(trunk.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def cache_key(trunk_id: str, transform: str, split: str, dataset_fingerprint: str) -> str:
    text = json.dumps([trunk_id, transform, split, dataset_fingerprint])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


# a temporary folder left by a writer that is gone is removed once this old (seconds): a folder just
# made by another host's writer on a shared file system is not, whatever its pid means here
STALE_AFTER_S = 60.0
_TMP_NAME = re.compile(r"^\.[^.]+\.(?P<pid>\d+)@(?P<host>.+)\.[^.]+$")


def _tmp_prefix(key: str) -> str:
    return f".{key}.{os.getpid()}@{socket.gethostname()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temp(root: Path, now: float | None = None) -> list[Path]:
    """Remove the temporary folders under ``root`` of writers on this host that are no longer running
    and that are older than STALE_AFTER_S; returns the folders removed."""
    now = time.time() if now is None else now
    host, removed = socket.gethostname(), []
    for path in root.glob(".*"):
        m = _TMP_NAME.match(path.name)
        if m is None or m["host"] != host or not path.is_dir() or _alive(int(m["pid"])):
            continue
        try:
            if now - path.stat().st_mtime < STALE_AFTER_S:
                continue
        except FileNotFoundError:  # another run removed it first
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


class FeatureStore:
    """One cache entry: ``<root>/<key>/{meta.json, labels.npy, <layer>.f16}``."""

    def __init__(self, root: str | Path, key: str) -> None:
        self.dir = Path(root) / key

    def layers(self) -> set[str]:
        meta = self.dir / "meta.json"
        if not meta.is_file():
            return set()
        return set(json.loads(meta.read_text())["dims"])

    def load(self, layers: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """{layer: read-only memmap float16 N x d}, labels (N, or N x C for multi-label data)."""
        meta = json.loads((self.dir / "meta.json").read_text())
        n = meta["n"]
        feats = {k: np.memmap(self.dir / f"{k}.f16", dtype=np.float16, mode="r", shape=(n, meta["dims"][k]))
                 for k in layers}
        return feats, np.load(self.dir / "labels.npy")

    def write(self, batches: Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]], n: int,
              extra: dict[str, Any] | None = None) -> None:
        """Stream (features, labels) batches into a fresh entry, adding layers to an existing one.

        Written in a temporary folder and moved into place, so a killed extraction never leaves a
        half-filled entry that a later run would trust.
        """
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp(self.dir.parent)
        tmp = Path(tempfile.mkdtemp(dir=self.dir.parent, prefix=_tmp_prefix(self.dir.name)))
        try:
            maps: dict[str, np.memmap] = {}
            labels: list[np.ndarray] = []  # int64 N (classes) or int8 N x 20 (VOC), so kept whole
            i = 0
            for feats, lab in batches:
                b = lab.shape[0]
                if i + b > n:
                    raise ValueError(f"feature cache: more samples than the {n} announced")
                for k, v in feats.items():
                    if k not in maps:
                        maps[k] = preallocated_memmap(tmp / f"{k}.f16", np.float16, (n, v.shape[1]))
                    maps[k][i:i + b] = v.detach().to(torch.float16).cpu().numpy()
                labels.append(lab.cpu().numpy())
                i += b
            dims = {k: int(m.shape[1]) for k, m in maps.items()}
            for m in maps.values():
                m.flush()
            if i != n:  # skipped (unreadable) samples: shrink to what was read
                for k, d in dims.items():
                    with open(tmp / f"{k}.f16", "r+b") as f:
                        f.truncate(i * d * 2)
            old = self.layers()
            if old:  # keep the layers extracted earlier
                for k in old - set(dims):
                    shutil.copy(self.dir / f"{k}.f16", tmp / f"{k}.f16")
                    dims[k] = json.loads((self.dir / "meta.json").read_text())["dims"][k]
            np.save(tmp / "labels.npy", np.concatenate(labels) if labels else np.empty(0, np.int64))
            (tmp / "meta.json").write_text(json.dumps({"n": i, "dims": dims, **(extra or {})}))
            if self.dir.exists():
                shutil.rmtree(self.dir)
            os.replace(tmp, self.dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextmanager
def entry_lock(store: FeatureStore) -> Iterator[None]:
    """Hold the entry's exclusive file lock (released when the holder exits, even if it is killed)."""
    locks = store.dir.parent / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{store.dir.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_or_extract(store: FeatureStore, layers: Sequence[str],
                    batches: Callable[[list[str]], Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]]],
                    n: int, extra: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray, bool]:
    """The entry's ``layers``, extracted first (``batches(missing layers)``) when the entry lacks some.

    Under the entry's lock: of several processes asking at once, one extracts and writes while the
    others wait, then find the layers present and only read. Returns (features, labels, hit), hit
    False for the process that extracted.
    """
    with entry_lock(store):
        missing = [k for k in layers if k not in store.layers()]
        if missing:
            store.write(batches(missing), n, extra)
    feats, labels = store.load(layers)
    return feats, labels, not missing


class CachedFeatures(torch.utils.data.Dataset):
    """Batched reads from a FeatureStore: ``ds[list_of_indices]`` -> {"features", "label"}.

    Use with ``DataLoader(ds, sampler=BatchSampler(...), batch_size=None)`` so that one indexed read
    per layer serves a whole batch. Caches that fit in ``in_memory_bytes`` are read into RAM once
    (float16): the probe then makes many epochs over them without touching the disk again.
    """

    def __init__(self, feats: dict[str, np.ndarray], labels: np.ndarray, indices: Sequence[int] | None = None,
                 in_memory_bytes: int = 4 << 30) -> None:
        total = sum(v.size * v.itemsize for v in feats.values())
        self.in_memory = total <= in_memory_bytes
        self.feats = {k: torch.from_numpy(np.array(v)) for k, v in feats.items()} if self.in_memory else feats
        self.labels = labels
        self.indices = np.arange(len(labels)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, idx: Any) -> dict[str, Any]:
        rows = np.sort(self.indices[np.asarray(idx)])
        if self.in_memory:
            t = torch.from_numpy(rows)
            feats = {k: v.index_select(0, t).float() for k, v in self.feats.items()}
        else:
            feats = {k: torch.from_numpy(np.asarray(v[rows], dtype=np.float32)) for k, v in self.feats.items()}
        return {"features": feats, "label": torch.from_numpy(self.labels[rows]), "skipped": []}
