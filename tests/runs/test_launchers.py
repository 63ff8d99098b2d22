"""Sweeps through hydra-submitit-launcher: submitit_local runs a real sweep in subprocesses, and
the SLURM launcher config (conf/hydra/launcher/slurm.yaml) composes with the plugin's options."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest
from helpers import CONF, tiny_overrides

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

# submitit_local: each job is a subprocess; keep them small on a shared CPU
LOCAL = ["hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1", "hydra.launcher.gpus_per_node=0"]


def _results(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]


@pytest.mark.slow
def test_submitit_local_sweeps_feed_the_leaderboard(tiny_data, tmp_path, run_cli, monkeypatch):
    from ssl_bench.report.collect import collect
    from ssl_bench.report.table import build_table
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the submitit job processes
    root = tmp_path / "sweeps"
    over = [o for o in tiny_overrides(tiny_data, tmp_path / "x", tmp_path / "cache") if not o.startswith("hydra.run")]
    assert run_cli("pretrain", "-m", "hydra/launcher=submitit_local", *LOCAL, "seed=0,1", *over,
                   "trainer.limit_val_batches=0", f"hydra.sweep.dir={root}/pretrain") == 0
    pre = _results(root / "pretrain")
    assert sorted(r["seed"] for r in pre) == [0, 1] and {r["status"] for r in pre} == {"completed"}
    assert list((root / "pretrain" / ".submitit").glob("*/*_submitted.pkl")), "ran through submitit"
    assert all((root / "pretrain" / str(i) / "checkpoints" / "last.ckpt").is_file() for i in (0, 1))

    # the same sweep machinery for probes, through the suite's own conf/hydra/launcher/local.yaml
    assert run_cli("probe", "-m", "hydra/launcher=local", *LOCAL, "init=gaussian", "seed=0,1",
                   "backbone.in_channels=3", "backbone.input_space=rgb", "probe.epochs=1", "probe.batch_size=32",
                   "probe.layers=[conv1,conv5]", f"data.root={tiny_data}", "data.synthetic=null",
                   "data.num_workers=0", f"paths.cache_dir={tmp_path}/cache", f"paths.log_dir={tmp_path}",
                   "trainer.enable_progress_bar=false", "backbone.widths=[16,32,48,48,32]",
                   "backbone.fc_channels=64", f"hydra.sweep.dir={root}/probe") == 0
    assert sorted(r["seed"] for r in _results(root / "probe")) == [0, 1]

    # one tree, read as it is: both pretrain runs counted, the probe row is mean ± std over 2 seeds
    table = build_table(collect([root]), published=False)
    assert table.n_pretrain == 2
    (row,) = table.section("probes").measured
    assert row.n_runs == 2 and sorted(row.seeds) == [0, 1]
    assert row.cells["conv1"].n == 2 and row.cells["conv1"].std is not None
    assert run_cli("leaderboard", str(root), "--no-published") == 0
    md = (root / "leaderboard.md").read_text()
    assert re.search(r"\|\s*2\s*\|", md), md  # the row's n (runs), once per row


def test_slurm_launcher_config_composes_with_requeue(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    from omegaconf import OmegaConf
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("pretrain", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                             "hydra.launcher.gpus_per_node=4", "hydra.launcher.nodes=2"],
                      return_hydra_config=True)
        default = compose("probe_run", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    la = cfg.hydra.launcher
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "slurm"
    assert la._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert set(OmegaConf.structured(SlurmQueueConf).keys()) <= set(la.keys()), "extends the plugin's options"
    assert (la.partition, la.nodes, la.gpus_per_node, la.tasks_per_node) == ("gpu", 2, 4, 4)
    assert la.max_num_timeout > 0 and la.signal_delay_s >= 60 and la.timeout_min > 0  # requeue on timeout
    assert OmegaConf.to_container(la)["submitit_folder"].startswith("${hydra.sweep.dir}/")  # logs in the sweep tree
    assert default.hydra.launcher.partition is None, "no partition: the cluster's default one"

    # the sbatch script submitit would submit, from these values mapped as the launcher maps them
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{__import__('os').environ['PATH']}")  # SlurmExecutor looks for srun
    params = {**OmegaConf.to_container(la), "tasks_per_node": la.tasks_per_node, "name": "pretrain"}
    folder = params.pop("submitit_folder").replace("${hydra.sweep.dir}", str(tmp_path))
    params.pop("_target_")
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    ex.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--nodes=2", "--gpus-per-node=4", "--ntasks-per-node=4", "--cpus-per-task=8",
                 "--signal=USR2@120", "--time=1440", "--mem=64GB"):
        assert f"#SBATCH {line}" in script, line
    assert ex._executor.max_num_timeout == 20


def test_requeued_job_reruns_in_the_same_sweep_subdir():
    """What submitit does on preemption/time-out: call the launcher's checkpoint() and resubmit the
    returned DelayedSubmission -- the same launcher (with its sweep config) and the same arguments,
    hence the same job number and output folder, where pretrain's ckpt_path=auto resumes."""
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
    launcher = SlurmLauncher(partition="gpu", max_num_timeout=3)
    args = (["seed=1"], "hydra.sweep.dir", 1, "job_id_for_1", {})
    delayed = launcher.checkpoint(*args)
    assert delayed.function is launcher and delayed.args == args
    again = pickle.loads(pickle.dumps(delayed))  # what is written to <job>_submitted.pkl
    assert again.args == args


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.slow
def test_preempted_job_is_requeued_by_submitit_and_resumes_mid_epoch(tmp_path, run_cli, monkeypatch):
    """A real requeue, without SLURM: a pretraining sweep job runs through submitit (the `local`
    launcher, the same plugin and submitit job environment as on SLURM). Strictly inside its first
    epoch the job's process gets submitit's preemption signal (SIGUSR2, what SLURM sends
    `signal_delay_s` before a time limit). Submitit then calls the launcher's checkpoint(), exits
    for requeue and starts the same job again, in the same sweep folder, where ckpt_path=auto
    resumes from the last step checkpoint. Checked: the requeue happened (submitit's log), the
    second attempt restored the weights from a mid-epoch checkpoint, and it finished at the step
    count of an uninterrupted run.

    Not checked here: SLURM's own requeue (``scontrol requeue``) and the sbatch script, which
    tests/runs/test_documented_commands.py checks with a fake sbatch."""
    import signal
    import threading
    import time

    import torch

    from ssl_bench.data.synthetic import SyntheticSpec, generate
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = generate(tmp_path / "data", SyntheticSpec(num_classes=8, train_per_class=40, val_per_class=2,
                                                     image_size=64, seed=3), workers=1)
    steps_per_epoch = 320 // 16
    sweep = tmp_path / "sweep"
    over = [o for o in tiny_overrides(data, tmp_path / "x", tmp_path / "cache") if not o.startswith("hydra.run")]
    stopped: dict[str, int] = {}

    def preempt() -> None:
        """Wait for a mid-epoch step checkpoint, then signal the job's task like SLURM would."""
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            steps = [int(p.stem[4:]) for p in (sweep / "0" / "checkpoints").glob("step*.ckpt")]
            jobs = list((sweep / ".submitit").glob("[0-9]*"))
            if steps and max(steps) >= 3 and jobs:
                for task in _children(int(jobs[0].name)):
                    os.kill(task, signal.SIGUSR2)
                    stopped["after_step"] = max(steps)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=preempt, daemon=True)
    watcher.start()
    code = run_cli("pretrain", "-m", "hydra/launcher=local", *LOCAL, *over,
                   "data.batch_size=16", "trainer.max_epochs=2", "trainer.limit_val_batches=0",
                   "seed=0", f"hydra.sweep.dir={sweep}")
    watcher.join(10)
    assert code == 0
    assert 0 < stopped.get("after_step", 0) < steps_per_epoch, stopped  # signalled strictly inside epoch 1
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in logs, logs[-3000:]
    (res,) = _results(sweep)
    assert res["status"] == "completed" and res["init"]["restored"] == "weights from the checkpoint"
    assert res["metrics"]["pretrain/steps"] == 2 * steps_per_epoch
    last = torch.load(sweep / "0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 2 * steps_per_epoch
