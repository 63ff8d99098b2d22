"""The probe feature cache: the temporary folder of a killed writer is removed by a later write once
its writer is gone and it is a minute old; live writers' folders and fresh ones are left alone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import torch

from ssl_bench.probe.feature_cache import STALE_AFTER_S, FeatureStore

# a writer killed after its first batch: its temporary folder holds a full-size layer file
KILLED_WRITER = """
import sys, time, torch
from ssl_bench.probe.feature_cache import FeatureStore

def batches():
    yield {"conv1": torch.ones(4, 8)}, torch.zeros(4, dtype=torch.int64)
    print("half written", flush=True)
    time.sleep(600)

FeatureStore(sys.argv[1], "killed").write(batches(), 8)
"""


def one_batch():
    return [({"conv1": torch.ones(4, 8)}, torch.zeros(4, dtype=torch.int64))]


def age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_killed_writers_temp_folder_is_removed_by_the_next_write(tmp_path):
    root = tmp_path / "features"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(root)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "half written"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    (left,) = root.glob(".killed.*")
    assert (left / "conv1.f16").stat().st_size == 8 * 8 * 2, "the killed writer left its full-size file"
    assert f".{writer.pid}@" in left.name

    FeatureStore(root, "a").write(one_batch(), 4)
    assert left.is_dir(), "younger than a minute: kept (another host's writer could own the name)"

    age(left, STALE_AFTER_S + 60)
    FeatureStore(root, "b").write(one_batch(), 4)
    assert not left.exists()
    assert sorted(p.name for p in root.iterdir()) == ["a", "b"]
    feats, labels = FeatureStore(root, "b").load(["conv1"])
    assert feats["conv1"].shape == (4, 8) and labels.shape == (4,)


def test_live_or_foreign_writers_temp_folders_are_kept(tmp_path):
    """Old folders of a writer that still runs (this process) or of another host are not touched."""
    root = tmp_path / "features"
    live = root / f".k1.{os.getpid()}@{socket.gethostname()}.abc123"
    foreign = root / f".k2.999999@not-{socket.gethostname()}.abc123"
    for d in (live, foreign):
        d.mkdir(parents=True)
        age(d, STALE_AFTER_S + 60)
    FeatureStore(root, "c").write(one_batch(), 4)
    assert live.is_dir() and foreign.is_dir()


def test_concurrent_askers_extract_once_and_all_read_the_entry(tmp_path):
    """Two processes (here: threads, each with its own lock file handle, as two DDP ranks have) asking
    for the same entry at once: one extracts and writes, the other waits and only reads."""
    import threading

    from ssl_bench.probe.feature_cache import load_or_extract
    extractions, results = [], {}
    started = threading.Barrier(2)

    def batches(missing):
        extractions.append(list(missing))
        time.sleep(0.3)  # a slow trunk pass: the other asker arrives meanwhile
        for i in range(2):
            yield {"conv1": torch.arange(8.0).repeat(4, 1) + i}, torch.full((4,), i, dtype=torch.int64)

    def ask(name):
        started.wait()
        results[name] = load_or_extract(FeatureStore(tmp_path, "entry"), ["conv1"], batches, 8)

    threads = [threading.Thread(target=ask, args=(r,)) for r in ("rank0", "rank1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert extractions == [["conv1"]], "exactly one asker extracted"
    assert sorted(hit for _, _, hit in results.values()) == [False, True]
    expected = torch.cat([torch.arange(8.0).repeat(4, 1) + i for i in range(2)]).numpy()
    for feats, labels, _ in results.values():
        assert (feats["conv1"] == expected).all() and labels.tolist() == [0] * 4 + [1] * 4
