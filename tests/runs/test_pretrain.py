"""End-to-end colorization pretraining on tiny generated data, through the real CLI and configs:
results, resuming after SIGTERM or SIGKILL inside an epoch, a full disk while checkpointing, bad input."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_overrides
from PIL import Image

pytestmark = pytest.mark.slow


def read_results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_one_epoch_writes_checkpoint_results_and_samples(tiny_data, tmp_path, run_cli):
    out = tmp_path / "run"
    assert run_cli("pretrain", *tiny_overrides(tiny_data, out, tmp_path / "cache")) == 0
    res = read_results(out)
    assert res["schema_version"] == 1 and res["status"] == "completed"
    assert res["kind"] == "pretrain" and res["method"] == "colorization/full"
    assert res["metrics"]["pretrain/steps"] == 5  # 80 images / batch 16
    assert math.isfinite(res["metrics"]["pretrain/loss"]) and "pretrain/val_loss" in res["metrics"]
    assert res["dataset"]["num_train"] == 80 and res["dataset"]["num_val"] == 20
    assert len(res["dataset"]["fingerprint"]) == 20 and res["dataset"]["skipped_images"] == 0
    assert res["config"]["data"]["root"] == str(tiny_data) and res["seed"] == 0
    assert res["package_version"] and res["wall_time_s"] > 0
    import pytorch_lightning
    assert res["versions"]["pytorch-lightning"] == pytorch_lightning.__version__  # provenance
    ckpt = torch.load(out / res["checkpoint"], map_location="cpu", weights_only=False)
    assert ckpt["ssl_bench"]["input_space"] == "L" and ckpt["ssl_bench"]["trunk"]["widths"] == [16, 32, 48, 48, 32]
    assert {k: v for k, v in ckpt["ssl_bench"].items() if k != "skipped_images"} == res["trunk"]
    # the samples callback: every 2nd of the 5 steps, the validation run, and the final picture
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == [
        "final.png", "step_0000000.png", "step_0000002.png", "step_0000004.png", "val_epoch_000.png"]
    assert "final" in " ".join(res["samples"])
    grid = Image.open(out / "samples" / "final.png")
    assert grid.mode == "RGB" and grid.width > grid.height / 8  # 3 columns: grey | prediction | truth
    assert "pretrain/loss" in (out / "csv" / "version_0" / "metrics.csv").read_text()
    assert list((tmp_path / "cache").glob("prior-*.pt")), "the ab prior is cached on disk"
    assert not list(out.rglob("*.tmp")), "no half-written files left"


STEPS_PER_EPOCH = 40  # 80 training images in batches of 2: an epoch long enough to stop inside it
ENV = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}


def latest_step(ckpt_dir: Path) -> int:
    steps = [int(p.stem[4:]) for p in ckpt_dir.glob("step*.ckpt") if p.stem[4:].isdigit()]
    return max(steps, default=-1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_run_resumes_where_it_stopped(sig, tiny_data, tmp_path):
    """Stop a pretraining strictly inside its epoch: SIGTERM exits 143 with a line saying how to
    resume (SIGKILL just dies), no results.json; the same command then resumes and finishes the epoch."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ssl_bench.cli", "pretrain", *tiny_overrides(tiny_data, out, tmp_path / "cache"),
           "data.batch_size=2", "callbacks.samples.every_n_steps=0", "trainer.num_sanity_val_steps=0"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while latest_step(out / "checkpoints") < 3:
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be stopped"
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert not (out / "results.json").exists()
    last = out / "checkpoints" / "last.ckpt"
    stopped_at = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 2 <= stopped_at < STEPS_PER_EPOCH and stopped_at % STEPS_PER_EPOCH != 0, stopped_at  # inside epoch 1
    if sig == signal.SIGTERM:
        lines = [line for line in err.splitlines() if line.startswith("ssl-bench:")]
        assert proc.returncode == 143 and len(lines) == 1 and "Traceback" not in err, (proc.returncode, err[-2000:])
        assert f"stopped by SIGTERM at step {stopped_at}" in lines[0]
        assert f"run the same command again to resume from the last checkpoint {last}" in lines[0]
    else:
        assert proc.returncode == -signal.SIGKILL
    partial = out / "checkpoints" / ".last.ckpt.k1ll3d.tmp"  # what a kill during a checkpoint write leaves
    partial.write_bytes(b"PK\x03\x04 half a checkpoint")
    os.utime(partial, (time.time() - 120, time.time() - 120))
    rerun = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    res = read_results(out)
    assert res["init"]["restored"] == "weights from the checkpoint"  # resumed, not started over
    assert res["metrics"]["pretrain/steps"] == STEPS_PER_EPOCH
    assert not list(out.rglob("*.tmp")), "the resumed run removed the partial checkpoint"


def test_full_disk_while_checkpointing_keeps_the_last_good_checkpoint(tiny_data, tmp_path, run_cli, capsys,
                                                                      monkeypatch):
    """ENOSPC in the middle of writing the step-3 checkpoint: one line naming the file, no truncated
    file at any checkpoint path, and the step-2 checkpoint still resumes."""
    real_save = torch.save

    def disk_fills(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("global_step") == 3:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills)
    out = tmp_path / "run"
    base = tiny_overrides(tiny_data, out, tmp_path / "cache")
    code = run_cli("pretrain", *base, "trainer.num_sanity_val_steps=0")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ssl-bench:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "not enough disk space" in lines[0] and str(out / "checkpoints" / "step0000003.ckpt") in lines[0]
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step0000002.ckpt"], "no partial file left"
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 2
    monkeypatch.setattr(torch, "save", real_save)  # space freed: the same command resumes
    assert run_cli("pretrain", *base, "trainer.num_sanity_val_steps=0") == 0
    res = read_results(out)
    assert res["init"]["restored"] == "weights from the checkpoint" and res["metrics"]["pretrain/steps"] == 5


def test_corrupt_images_are_skipped_and_counted(tiny_data, tmp_path, run_cli):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "train" / next(p.name for p in (data / "train").iterdir()) / "broken.jpg").write_bytes(b"not a jpeg")
    (data / "train" / "extra").mkdir()
    (data / "train" / "extra" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (data / "val" / "extra").mkdir()
    shutil.copy(next((data / "val").rglob("*.jpg")), data / "val" / "extra" / "ok.jpg")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="unreadable image"):
        code = run_cli("pretrain", *tiny_overrides(data, out, tmp_path / "cache"), "data.batch_size=82")
    assert code == 0
    res = read_results(out)
    assert res["dataset"]["skipped_images"] == 2
    assert res["dataset"]["num_train"] == 82


def test_missing_data_dir_is_one_clear_line(tmp_path, run_cli, capsys):
    code = run_cli("pretrain", "data=imagenet", f"data.root={tmp_path}/nope", f"paths.cache_dir={tmp_path}",
                   f"hydra.run.dir={tmp_path}/run")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "data.root=" in err[0] and "ROOT/train/<class>" in err[0]


def test_missing_required_value_names_the_key(tmp_path, run_cli, capsys):
    code = run_cli("pretrain", "data=imagenet", f"hydra.run.dir={tmp_path}/run")
    assert code == 2 and "data.root" in capsys.readouterr().err


def test_nan_loss_stops_with_error_and_keeps_last_good_checkpoint(tiny_data, tmp_path, run_cli, capsys, monkeypatch):
    import ssl_bench.pretext.colorization as colorization
    real, calls = colorization.soft_cross_entropy_map, {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 3 else loss  # one call a step: NaN at step 4

    monkeypatch.setattr(colorization, "soft_cross_entropy_map", poisoned)
    out = tmp_path / "run"
    code = run_cli("pretrain", *tiny_overrides(tiny_data, out, tmp_path / "cache"), "trainer.num_sanity_val_steps=0")
    err = capsys.readouterr().err
    assert code == 2 and "nan" in err.lower() and "last good checkpoint" in err
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (out / "results.json").exists()


def test_checkpoint_from_other_architecture_lists_keys(tiny_data, tmp_path, run_cli, capsys):
    out = tmp_path / "run"
    assert run_cli("pretrain", *tiny_overrides(tiny_data, out, tmp_path / "cache")) == 0
    capsys.readouterr()
    code = run_cli("pretrain", *tiny_overrides(tiny_data, tmp_path / "other", tmp_path / "cache"),
                   "backbone.fc_channels=96", f"ckpt_path={out}/checkpoints/last.ckpt")
    err = capsys.readouterr().err
    assert code == 2 and "does not match the model architecture" in err and "fc6.0.weight" in err


@pytest.mark.parametrize("variant,method", [
    (["pretext.objective.kind=regression", "pretext.objective.rebalance=false"], "colorization/l2"),
    (["pretext.objective.rebalance=false"], "colorization/class")])
def test_ablations_train(variant, method, tiny_data, tmp_path, run_cli):
    out = tmp_path / "run"
    assert run_cli("pretrain", *tiny_overrides(tiny_data, out, tmp_path / "cache"), *variant) == 0
    assert read_results(out)["method"] == method


def test_multirun_sweeps_seeds_into_the_default_sweep_folder(tiny_data, tmp_path, run_cli, monkeypatch):
    """A plain `ssl-bench pretrain -m ...`: no hydra.sweep.dir, no paths.log_dir, so the sweep
    folder is the default one under the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SSL_BENCH_OUTPUTS", raising=False)
    over = [o for o in tiny_overrides(tiny_data, tmp_path / "x", tmp_path / "cache")
            if not o.startswith(("hydra.run", "paths.log_dir"))]
    assert run_cli("pretrain", "-m", *over, "seed=0,1", "trainer.limit_val_batches=0") == 0
    (sweep,) = (tmp_path / "outputs" / "pretrain" / "multiruns").iterdir()
    results = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/results.json")}
    assert {job: r["seed"] for job, r in results.items()} == {"0": 0, "1": 1}


def test_wandb_logger_offline_writes_a_run(tiny_data, tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    assert run_cli("pretrain", *tiny_overrides(tiny_data, out, tmp_path / "cache"), "logger=wandb") == 0
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), "an offline W&B run with its data file"
    assert (out / "csv" / "version_0" / "metrics.csv").is_file()  # CSV always
    assert read_results(out)["status"] == "completed"
