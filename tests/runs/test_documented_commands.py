"""Every command shown in README.md and docs/*.md, run as written.

Each ``ssl-bench ...`` / ``make ...`` line of a code block is classified below, and a test fails when
the docs show a command that is not classified. A command is

- RUN: run in-process as written, in a temporary working folder with SSL_BENCH_DATA / _CACHE /
  _OUTPUTS pointing into it (the variables docs/usage.md documents), with size overrides appended
  (image counts, widths, epochs, batch sizes, data-loader workers) and nothing else changed. The
  placeholders a user fills in (CKPT, DIR, <time>, ...) are given files this test made;
- SLURM: a sweep on the SLURM launcher, run up to the submission: a fake ``sbatch`` on PATH records
  the script it is given, which is then checked (requeue signal, one task per GPU, the sweep folder);
- COMPOSE: needs a real data set or weights (/datasets/..., /data/...): its config is composed
  with the same overrides, and the reason is listed;
- ELSEWHERE: run by another test (named) or by a make target that runs this suite itself.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
from helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# the sizes appended to each kind of command: tiny data, tiny trunk, one short epoch
DATA = ["data.synthetic.num_classes=4", "data.synthetic.train_per_class=6", "data.synthetic.val_per_class=2",
        "data.num_workers=0", "data.batch_size=8"]
TRUNK = ["backbone.widths=[16,32,48,48,32]", "backbone.fc_channels=64"]
FAST = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "trainer.num_sanity_val_steps=0"]
PRETRAIN = [*DATA, *TRUNK, *FAST, "callbacks.samples.every_n_steps=0"]
PROBE = [*DATA, *TRUNK, *FAST, "probe.batch_size=16"]
LINEAR = [*PROBE, "probe.epochs=1"]


def documented_commands() -> list[str]:
    """The ``ssl-bench`` / ``make`` lines of the docs' code blocks, continuation lines joined, comments dropped."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```[a-z]*\n(.*?)```", doc.read_text(), re.S):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.split("  #")[0].split(" # ")[0].strip()
                if re.match(r"(ssl-bench|make)( |$)", line):
                    found.append(" ".join(line.split()))
    return list(dict.fromkeys(found))


# ------------------------------------------------------------------------------------ classification

# command as written -> the sizes appended when it runs
RUN: dict[str, list[str]] = {
    "ssl-bench pretrain": PRETRAIN,
    "ssl-bench pretrain -m seed=0,1,2": PRETRAIN,
    "ssl-bench pretrain -m seed=0,1,2 pretext.objective.rebalance=true,false": PRETRAIN,
    "ssl-bench pretrain -m seed=0,1,2 init=gaussian,kraehenbuehl": PRETRAIN,
    "ssl-bench pretrain trainer.max_epochs=5 optimizer.lr=3e-4 precision=bf16-mixed": PRETRAIN,
    "ssl-bench probe checkpoint=outputs/.../checkpoints/last.ckpt": LINEAR,
    "ssl-bench probe checkpoint=... probe=knn": PROBE,
    "ssl-bench probe init=gaussian": LINEAR,
    "ssl-bench probe init=gaussian backbone.input_space=rgb": LINEAR,
    "ssl-bench probe init=kraehenbuehl backbone.input_space=rgb": [*LINEAR, "init.num_images=16"],
    "ssl-bench probe -m hydra/launcher=local init=gaussian seed=0,1": [
        *LINEAR, "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1"],
}

SLURM = [c for c in documented_commands() if "hydra/launcher=slurm" in c]

# command as written -> why it is only composed
COMPOSE: dict[str, str] = {
    "ssl-bench pretrain data=imagenet data.root=/datasets/ILSVRC2012": "needs ImageNet",
    "ssl-bench pretrain experiment=colorization_full data.root=/datasets/ILSVRC2012": "needs ImageNet",
    "ssl-bench pretrain experiment=colorization_class data.root=/datasets/ILSVRC2012": "needs ImageNet",
    "ssl-bench pretrain experiment=colorization_l2 data.root=/datasets/ILSVRC2012": "needs ImageNet",
    "ssl-bench pretrain experiment=colorization_full data.root=...": "needs ImageNet (root elided)",
    "ssl-bench pretrain experiment=colorization_full data.root=... hydra.run.dir=outputs/full_seed0":
        "needs ImageNet (root elided)",
    "ssl-bench probe checkpoint=outputs/colorization_full/runs/<time>/checkpoints/last.ckpt data=imagenet "
    "data.root=/datasets/ILSVRC2012": "needs ImageNet",
    "ssl-bench pretrain data=imagenet data.root=~/data/imagenet data.decoded_cache=~/data/imagenet_u8":
        "needs ImageNet and its decoded cache",
    "ssl-bench pretrain data=imagenet data.root=DIR data.decoded_cache=CACHE": "needs ImageNet and its decoded cache",
    "ssl-bench finetune task=voc_cls checkpoint=CKPT voc_root=/data/VOCdevkit": "needs PASCAL VOC",
    "ssl-bench probe probe=svm_voc07 checkpoint=CKPT probe.voc_root=/data/VOCdevkit": "needs PASCAL VOC",
    "ssl-bench pretrain +logger.wandb.id=abc123": "adds a key only (logs to W&B; tests/report/test_wandb.py runs W&B)",
    "ssl-bench pretrain data=cifar10 data.root=/datasets/cifar10": "needs CIFAR-10",
    "ssl-bench pretrain data=stl10 data.root=/datasets/stl10 data.train_split=train+unlabeled": "needs STL-10",
    "ssl-bench probe data=stl10 data.root=/datasets/stl10 checkpoint=outputs/.../last.ckpt": "needs STL-10",
    "ssl-bench probe data=places205 data.root=/datasets/places205 checkpoint=... protocol=paper": "needs Places205",
    "ssl-bench probe checkpoint=CKPT protocol=paper data=imagenet data.root=/datasets/ILSVRC2012": "needs ImageNet",
    "ssl-bench probe checkpoint=CKPT protocol=paper probe=svm_voc07 probe.voc_root=/data/VOCdevkit": "needs PASCAL VOC",
    "ssl-bench probe checkpoint=weights/colorization.ckpt protocol=paper data=imagenet data.root=/datasets/ILSVRC2012":
        "needs ImageNet and the authors' imported weights",
}
COMPOSE_BENCHMARK: dict[str, str] = {
    "ssl-bench benchmark 'voc_tasks=[voc_cls_fc6,voc_det]' 'finetune_overrides=[\"voc_root=/data/VOCdevkit\"]'":
        "needs PASCAL VOC",
    "ssl-bench benchmark 'probes=[linear,knn]' 'finetune_overrides=[\"voc_root=/data/VOCdevkit\"]'": "needs PASCAL VOC",
    "ssl-bench benchmark 'voc_tasks=[voc_cls_fc6,voc_cls_all,voc_det,voc_seg]' "
    "'finetune_overrides=[\"voc_root=/data/VOCdevkit\"]'": "needs PASCAL VOC",
    "ssl-bench benchmark 'methods=[colorization_full,gaussian_rgb]' 'probes=[linear,knn]'":
        "eight pretrain and probe stages; the same pipeline runs end to end in "
        "tests/runs/test_benchmark.py::test_smoke_pipeline_runs_every_stage_then_skips_them",
    "ssl-bench benchmark logger=wandb logger.wandb.project=P":
        "runs in tests/report/test_wandb.py::test_smoke_benchmark_with_wandb_logger_end_to_end",
}

# command as written -> the test or make target that runs it
ELSEWHERE: dict[str, str] = {
    "make demo": "the full demo (hours on a CPU); its pipeline at smoke size: tests/runs/test_benchmark.py",
    "make test": "runs this suite",
    "make bench": "tests/bench/test_run_all.py",
    "make bench-quick": "tests/bench/test_run_all.py",
    "ssl-bench benchmark preset=smoke":
        "tests/runs/test_benchmark.py::test_smoke_pipeline_runs_every_stage_then_skips_them",
    "ssl-bench demo [overrides]": "= ssl-bench benchmark preset=demo (make demo)",
    "ssl-bench pretrain logger=wandb logger.wandb.project=P [logger.wandb.entity=E] [logger.wandb.offline=true]":
        "tests/runs/test_pretrain.py::test_wandb_logger_offline_writes_a_run",
    "ssl-bench leaderboard outputs/probe/multiruns/<time>": "run below on the probe sweep this test makes",
    "ssl-bench leaderboard DIR... --wandb-project P [--wandb-entity E] [--wandb-mode offline|online]":
        "tests/report/test_wandb.py::test_leaderboard_command_logs_a_wandb_run_without_network",
}

# docs/transfer.md, "a real-format run": minutes on a CPU; the same comparison at test size
_LEARNS = "the same comparison at test size: tests/transfer/test_voc_cls_learns.py"
_LEARNS_TRUNK = '"backbone.widths=[32,64,96,96,64]" backbone.fc_channels=128 backbone.fc6_kernel=1'
_LEARNS_VOC = ("voc_root=synthetic synthetic_voc.num_trainval=400 synthetic_voc.num_test=100 "
               "synthetic_voc.image_size=96 recipe.max_steps=300 recipe.crop_size=67 finetune.rescale_images=80 "
               "finetune.rescale_size=67")
ELSEWHERE.update({
    "ssl-bench pretrain experiment=demo_supervised data.synthetic.num_classes=20 data.synthetic.train_per_class=60 "
    f"data.synthetic.val_per_class=5 data.batch_size=64 trainer.max_epochs=8 {_LEARNS_TRUNK}": _LEARNS,
    f"ssl-bench finetune task=voc_cls protocol=paper checkpoint=CKPT {_LEARNS_VOC}": _LEARNS,
    "ssl-bench finetune task=voc_cls protocol=paper init=gaussian backbone=alexnet_small backbone.input_space=rgb "
    f"{_LEARNS_TRUNK} {_LEARNS_VOC}": _LEARNS,
})


WEIGHTS = "needs the authors' released weight files; the converters run on files written by an independent " \
          "encoder in tests/weights/test_import_cli.py"
ELSEWHERE.update({
    "ssl-bench import-weights caffe --prototxt P --caffemodel M --out CKPT [--convention NAME] [--geometry G]":
        "a synopsis: " + WEIGHTS,
    "ssl-bench import-weights caffe2-pkl --pkl F --out CKPT [--convention NAME] [trunk options]":
        "a synopsis: " + WEIGHTS,
    "ssl-bench import-weights vissl --checkpoint F --out CKPT [--convention NAME] [trunk options]":
        "a synopsis: " + WEIGHTS,
    "ssl-bench import-weights state-dict --weights F [--mapping M.yaml] [--trunk-config C.yaml] --out CKPT "
    "[--convention NAME]": "a synopsis; its concrete form (the export round trip) runs below",
    "ssl-bench import-weights caffe --prototxt alexnet_deploy_lab_fc.prototxt --caffemodel "
    "alexnet_release_450000_nobn_fc_rs.caffemodel --out weights/colorization.ckpt": WEIGHTS,
    "ssl-bench import-weights caffe --prototxt deploy_lab.prototxt --caffemodel "
    "model_splitbrainauto_clcl_rs.caffemodel --out weights/splitbrain.ckpt": WEIGHTS,
    "ssl-bench import-weights caffe --prototxt ce_features.prototxt --caffemodel ce_features.caffemodel "
    "--convention bgr255-caffe-mean --out weights/context_encoder.ckpt": WEIGHTS,
    "ssl-bench import-weights caffe --prototxt DEPLOY.prototxt --caffemodel MODEL.caffemodel "
    "--convention bgr255-caffe-mean --out weights/doersch.ckpt": WEIGHTS,
    "ssl-bench import-weights caffe2-pkl --pkl alexnet_colorization_in1k_pretext.pkl --out weights/goyal_color.ckpt":
        WEIGHTS,
    "ssl-bench import-weights vissl --checkpoint converted_alexnet_colorization_in1k_pretext.torch "
    "--out weights/vissl_color.ckpt": WEIGHTS,
    "ssl-bench import-weights caffe --prototxt deploy.prototxt --caffemodel model.caffemodel --out released.ckpt":
        WEIGHTS,
    "ssl-bench export released.ckpt --format state-dict --out exported/":
        "needs the imported weights; export of an imported checkpoint runs in tests/weights/test_export.py",
    "ssl-bench prepare-weights last.ckpt --out dagger.pt --rescale calibrate --rescale-data /data/ILSVRC2012/train "
    "--geometry deploy": "needs ImageNet: tests/runs/test_prepare_weights.py::"
                         "test_calibrated_preparation_in_the_deploy_geometry",
    "ssl-bench pretrain ... data.decode=device":
        "needs a GPU decoder: tests/data/test_decoded_cache.py::test_pretraining_with_device_decode",
    "ssl-bench benchmark [preset=demo|smoke] ['methods=[...]'] ['probes=[linear,knn]'] "
    "['voc_tasks=[voc_cls_fc6,voc_det,...]'] [overrides]": "a synopsis; its concrete forms are listed above",
    "ssl-bench turing-test --checkpoint CKPT --data DIR [--port 8765] [--db answers.sqlite] [--trials 40] "
    "[--sentinel-fraction 0.1] [--seconds 1.0] [--temperature 0.38] [--seed 0]":
        "serves until stopped: tests/colorization/test_study.py starts it and answers through HTTP",
    "ssl-bench turing-test results --db answers.sqlite [--out results.json] [--min-sentinel-accuracy 1.0] "
    "[--method M]": "needs a study's answers: tests/colorization/test_study.py",
})
COMPOSE.update({
    "ssl-bench probe protocol=paper checkpoint=CKPT data=imagenet data.root=/datasets/ILSVRC2012": "needs ImageNet",
    "ssl-bench finetune protocol=paper task=voc_cls checkpoint=CKPT voc_root=/data/VOCdevkit": "needs PASCAL VOC",
    "ssl-bench probe protocol=paper checkpoint=released.ckpt data=imagenet data.root=/datasets/ILSVRC2012":
        "needs ImageNet and the authors' imported weights",
    "ssl-bench probe checkpoint=... probe=svm_voc07 probe.voc_root=/data/VOCdevkit": "needs PASCAL VOC",
    "ssl-bench finetune task=voc_cls checkpoint=outputs/.../last.ckpt voc_root=/data/VOCdevkit "
    "[task.module.train_from=conv1]": "needs PASCAL VOC",
    "ssl-bench finetune task=voc_det checkpoint=... voc_root=/data/VOCdevkit finetune.mode=color": "needs PASCAL VOC",
    "ssl-bench finetune task=voc_seg checkpoint=... voc_root=/data/VOCdevkit "
    "[task.datamodule.sbd_root=/data/benchmark_RELEASE]": "needs PASCAL VOC and SBD",
})
# plain commands that need a real data set: their command line is parsed by the command's parser only
PARSE_ONLY: dict[str, str] = {
    "ssl-bench data cache --root ~/data/imagenet --out ~/data/imagenet_u8 --size 256 --workers 16": "needs ImageNet",
}
RUN.update({
    "ssl-bench export CKPT --format state-dict --out DIR": [],
    "ssl-bench import-weights state-dict --weights DIR/state_dict.pt --trunk-config DIR/model_card.json "
    "--out again.ckpt": [],
    "ssl-bench leaderboard outputs/probe --out outputs/leaderboard": [],
    "ssl-bench pretrain experiment=demo": PRETRAIN,
    "ssl-bench pretrain ... hydra.run.dir=outputs/full_seed0": PRETRAIN,
    "ssl-bench finetune task=voc_cls init=kraehenbuehl backbone.input_space=rgb voc_root=synthetic": [
        *TRUNK, "synthetic_voc.num_trainval=8", "synthetic_voc.num_test=8", "synthetic_voc.image_size=64",
        "recipe.max_steps=2", "recipe.batch_size=4", "recipe.load_size=72", "recipe.crop_size=64",
        "task.datamodule.test_batch_size=4", "task.datamodule.num_workers=0", "finetune.rescale_images=4",
        "finetune.rescale_size=64", "init.num_images=4", "trainer.enable_progress_bar=false",
        "backbone.fc_channels=64"],
})
# usage synopses ([optional] parts, a|b alternatives): the concrete commands each one is run as (the
# placeholders are given files this test made; nothing optional is added but sizes)
SYNOPSES: dict[str, list[str]] = {
    "ssl-bench pretrain pretext=context_prediction|context_encoder|supervised [...]": [
        "ssl-bench pretrain pretext=context_prediction", "ssl-bench pretrain pretext=context_encoder",
        "ssl-bench pretrain pretext=supervised"],
    "ssl-bench prepare-weights CHECKPOINT --out prepared.pt [--mode auto|gray|color|rgb] [--no-absorb] "
    "[--rescale calibrate|per_unit|none] [--rescale-data /data/ILSVRC2012/train] [--rescale-images N] [--size S] "
    "[--geometry train|deploy] [--calibration-draws 256] [--seed 0]": [
        "ssl-bench prepare-weights CHECKPOINT --out prepared.pt"],
    "ssl-bench colorize photo.jpg old_photos/ checkpoint=CKPT [decode=annealed_mean|mean|mode] [T=0.38] "
    "[--out DIR] [--size 256] [--device auto]": ["ssl-bench colorize photo.jpg old_photos/ checkpoint=CKPT"],
    "ssl-bench evaluate-colorization checkpoint=CKPT [classifier=SUPERVISED_CKPT | "
    "classifier=vgg16:/path/vgg16.pth] [data=imagenet data.root=...] [decode=annealed_mean T=0.38] "
    "[max_images=N] [device=auto|cpu|cuda]": ["ssl-bench evaluate-colorization checkpoint=CKPT"],
    "ssl-bench gallery --data DIR_OR_IMAGE... [--l2 CKPT] [--class CKPT] [--full CKPT] [--num 16] "
    "[--out gallery/] [--decode annealed_mean] [--T 0.38]": ["ssl-bench gallery --data DIR --full CKPT"],
    "ssl-bench prior-figure --data DIR | --checkpoint CKPT [--out prior.png] [--lam 0.5] [--sigma 5] "
    "[--max-images N] [--ab-stride 1]": ["ssl-bench prior-figure --data DIR",
                                         "ssl-bench prior-figure --checkpoint CKPT"],
    "ssl-bench leaderboard DIR... [--out DIR] [--no-published] [--wandb-project P [--wandb-entity E] "
    "[--wandb-group G] [--wandb-tag T ...] [--wandb-mode online|offline]]": ["ssl-bench leaderboard DIR"],
    "ssl-bench data synthetic --out DIR [--classes 16] [--train-per-class 400] [--val-per-class 100] [--size 64] "
    "[--seed 0] [--format jpeg|png] [--workers N] [--overwrite]": ["ssl-bench data synthetic --out DIR"],
    "ssl-bench data cache --root DIR --out CACHE [--split train|val|both] [--size S] [--workers N] [--overwrite] "
    "[--layout imagefolder|folder] [--val-fraction 0.02] [--seed 0] [--max-train-images N]": [
        "ssl-bench data cache --root DIR --out CACHE"],
}


def classified(command: str) -> bool:
    return any(command in table for table in (RUN, SLURM, COMPOSE, COMPOSE_BENCHMARK, ELSEWHERE, SYNOPSES,
                                              PARSE_ONLY))


def test_every_documented_command_is_classified():
    missing = [c for c in documented_commands() if not classified(c)]
    assert not missing, "documented commands this test does not run or list:\n" + "\n".join(missing)

# the sizes appended to the plain commands (image counts and sizes only)
PLAIN_SIZES: dict[str, list[str]] = {
    "ssl-bench data synthetic --out DIR": ["--classes", "2", "--train-per-class", "2", "--val-per-class", "1",
                                           "--size", "32", "--workers", "1"],
    "ssl-bench data cache --root DIR --out CACHE": ["--size", "32", "--workers", "1"],
    "ssl-bench gallery --data DIR --full CKPT": ["--num", "2"],
    "ssl-bench prior-figure --data DIR": ["--max-images", "8"],
    "ssl-bench colorize photo.jpg old_photos/ checkpoint=CKPT": ["--size", "64"],
    "ssl-bench evaluate-colorization checkpoint=CKPT": [*DATA, "max_images=4"],
}
HYDRA_COMMANDS = {"pretrain": "pretrain", "probe": "probe_run", "finetune": "finetune",
                  "evaluate-colorization": "colorization_eval"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A user's working folder: the documented environment variables point into it."""
    import torch
    home = tmp_path_factory.mktemp("user")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared CPU: intra-op threads cost far more than they save
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        mp.setenv("SSL_BENCH_DATA", str(home / "data"))
        mp.setenv("SSL_BENCH_CACHE", str(home / ".cache"))
        mp.setenv("SSL_BENCH_OUTPUTS", str(home / "outputs"))
        mp.setenv("OMP_NUM_THREADS", "1")  # inherited by submitit's job processes
        yield home
    torch.set_num_threads(threads)


def cli(*args: str) -> int:
    """``ssl-bench ARGS`` in-process; the exit status."""
    import time

    from ssl_bench.cli import main
    time.sleep(1.05)  # the default run folders are named by the second: one run per second, as a user types them
    argv = sys.argv
    sys.argv = ["ssl-bench", *args]
    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        sys.argv = argv
    return 0


def results(home: Path) -> set[Path]:
    return set((home / "outputs").rglob("results.json"))


@pytest.fixture(scope="module")
def user_files(workspace):
    """The files a user points the commands at: a colorization checkpoint (from ``ssl-bench
    pretrain`` as documented), an image folder, a photo and a folder of photos."""
    assert cli("pretrain", *RUN["ssl-bench pretrain"]) == 0
    (ckpt,) = (workspace / "outputs" / "pretrain" / "runs").glob("*/checkpoints/last.ckpt")
    (images,) = (workspace / "data").glob("synthetic_*")
    import shutil
    photos = workspace / "old_photos"
    photos.mkdir()
    val = sorted((images / "val").rglob("*.jpg"))
    for i, src in enumerate(val[:2]):
        shutil.copy(src, photos / f"p{i}.jpg")
    shutil.copy(val[2], workspace / "photo.jpg")
    return {"CKPT": str(ckpt), "CHECKPOINT": str(ckpt), "outputs/.../checkpoints/last.ckpt": str(ckpt),
            "...": str(ckpt), "DIR": str(images), "CACHE": str(workspace / "u8cache")}


def shell_words(command: str) -> list[str]:
    """The words a shell passes on: quotes removed, ``~`` expanded at a word's start and after its
    first ``=`` (as bash does; the user's home is the working folder here), ``<time>`` as the run
    folder a user copies from their outputs."""
    def home(text: str) -> str:
        return str(Path.cwd()) + text[1:] if text.startswith("~/") else text

    words = []
    for word in shlex.split(command):
        key, eq, value = word.partition("=")
        word = f"{key}={home(value)}" if eq else home(word)
        words.append(word.replace("<time>", "2026-01-01_00-00-00"))
    return words


def substitute(command: str, files: dict[str, str]) -> list[str]:
    """The command's arguments with the user's placeholders filled in (``checkpoint=...`` -> a file);
    a bare ``...`` (the user's other overrides) is left out."""
    out = []
    for arg in shell_words(command)[1:]:
        key, eq, value = arg.partition("=")
        if arg == "...":
            continue
        if eq and value in files:
            arg = f"{key}={files[value]}"
        elif arg in files:
            arg = files[arg]
        elif arg.startswith("DIR/"):
            arg = files["DIR"] + arg[3:]
        out.append(arg)
    if command.startswith("ssl-bench leaderboard"):
        out = [a if a != files["DIR"] else "outputs" for a in out]
    if command.startswith(("ssl-bench export", "ssl-bench import-weights state-dict")):  # DIR: the export folder
        out = [re.sub(r"^" + re.escape(files["DIR"]) + r"(?=/|$)", "exported", a) for a in out]
    if command.startswith("ssl-bench data synthetic"):
        out = [a if a != files["DIR"] else "synthetic_out" for a in out]
    return out


def _newest_sweep(home: Path, task: str) -> Path:
    return sorted((home / "outputs" / task / "multiruns").iterdir())[-1]


RUN_CASES = [*RUN, *(c for concrete in SYNOPSES.values() for c in concrete)]


@pytest.mark.parametrize("command", RUN_CASES)
def test_documented_command_runs_as_written(command, workspace, user_files, capsys):
    if command == "ssl-bench pretrain":
        return  # ran in the user_files fixture (its checkpoint feeds the other commands)
    args = substitute(command, user_files) + RUN.get(command, []) + PLAIN_SIZES.get(command, [])
    name = args[0]
    before = results(workspace)
    code = cli(*args)
    err = capsys.readouterr().err
    if command == "ssl-bench pretrain pretext=context_prediction":
        # the paper's 96 px patches do not fit the synthetic 56 px crops: the error names the preset that fits
        assert code == 2 and "experiment=demo_context_prediction" in err and "data.crop_size" in err, err[-2000:]
        return
    assert code == 0, err[-3000:]
    new = results(workspace) - before
    if name in HYDRA_COMMANDS and "-m" in args:
        combos = 1
        for a in args:
            if "=" in a and "," in a.split("=", 1)[1] and not a.startswith(("backbone.", "probe.layers")):
                combos *= len(a.split("=", 1)[1].split(","))
        sweep = _newest_sweep(workspace, {"pretrain": "pretrain", "probe": "probe"}[name])
        assert len(list(sweep.glob("*/results.json"))) == combos, (command, sorted(map(str, new)))
    elif name in HYDRA_COMMANDS:
        assert len(new) == 1, (command, sorted(map(str, new)))
        record = json.loads(next(iter(new)).read_text())
        assert record["status"] == "completed"
    if command == "ssl-bench pretrain ... hydra.run.dir=outputs/full_seed0":
        # re-running the same command resumes in the same folder: nothing left to train
        first = json.loads((workspace / "outputs" / "full_seed0" / "results.json").read_text())
        assert cli(*args) == 0
        again = json.loads((workspace / "outputs" / "full_seed0" / "results.json").read_text())
        assert again["init"]["restored"] == "weights from the checkpoint"
        assert again["metrics"]["pretrain/steps"] == first["metrics"]["pretrain/steps"]


def _compose_args(command: str) -> tuple[str, list[str]]:
    parts = shell_words(command)
    name, args = parts[1], [a for a in parts[2:] if a != "-m" and not a.startswith("[")]
    return ("benchmark" if name == "benchmark" else HYDRA_COMMANDS[name]), args


@pytest.mark.parametrize("command", [*COMPOSE, *COMPOSE_BENCHMARK])
def test_documented_command_needing_real_data_composes(command, workspace):
    from ssl_bench.config import compose, validate
    from ssl_bench.runs.jobs import check_overrides
    config, args = _compose_args(command)
    cfg = compose(config, args)
    if config != "benchmark":
        check_overrides(config, args)
        validate(cfg)
    else:
        from ssl_bench.runs.benchmark import plan, validate
        validate(cfg)
        assert plan(cfg)


@pytest.mark.parametrize("command", list(PARSE_ONLY))
def test_documented_plain_command_needing_real_data_parses(command):
    from ssl_bench.runs.data import _parser
    a = _parser().parse_args(shlex.split(command)[2:])
    assert a.cmd == "cache" and a.size == 256


@pytest.mark.parametrize("command", list(ELSEWHERE))
def test_commands_run_elsewhere_name_an_existing_test(command):
    reason = ELSEWHERE[command]
    for file, name in re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", reason):
        assert (ROOT / file).is_file(), reason
        if name:
            assert re.search(rf"^def {name}\(", (ROOT / file).read_text(), re.M), reason


# ---------------------------------------------------------------------------------------- SLURM

FAKE_SBATCH = """#!/bin/sh
# records the script it is given, answers like sbatch
cat "$1" >> "{record}"
echo "Submitted batch job 4242"
"""


@pytest.mark.parametrize("command", SLURM)
def test_slurm_sweep_as_written_is_submitted(command, workspace, monkeypatch, capsys):
    """Run the documented SLURM sweep up to the submission (a fake sbatch on PATH), then read the
    script SLURM would have run."""
    import submitit
    from hydra.core.utils import JobReturn, JobStatus

    bin_dir, record = workspace / "fake_bin", workspace / "sbatch_scripts.txt"
    bin_dir.mkdir(exist_ok=True)
    sbatch, srun = bin_dir / "sbatch", bin_dir / "srun"
    sbatch.write_text(FAKE_SBATCH.format(record=record))
    srun.write_text("#!/bin/sh\nexit 1\n")  # submitit checks that srun exists; the job would call it on the cluster
    for tool in (sbatch, srun):
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    def submitted(job):  # the cluster would run it: report the job as done without waiting for it
        ret = JobReturn()
        ret.status, ret.return_value = JobStatus.COMPLETED, None
        return [ret]
    monkeypatch.setattr(submitit.core.core.Job, "results", submitted)
    record.unlink(missing_ok=True)
    before = set((workspace / "outputs").glob("*/multiruns/*/.submitit"))
    assert cli(*substitute(command, {})) == 0, capsys.readouterr().err[-3000:]
    script = record.read_text()
    n = len(next(a for a in shlex.split(command) if a.startswith("seed=")).split("=")[1].split(","))
    # the sweep folder: <SSL_BENCH_OUTPUTS>/<task>/multiruns/<time>, as docs/usage.md says
    (submitit_dir,) = set((workspace / "outputs").glob("*/multiruns/*/.submitit")) - before
    sweep = submitit_dir.parent
    assert "#SBATCH --signal=USR2@120" in script             # the requeue signal, 120 s before the limit
    words = dict(w.split("=", 1) for w in shlex.split(command) if "=" in w)
    gpus = words.get("hydra.launcher.gpus_per_node", "1")
    # one task per GPU, and as many GPUs as trainer.devices
    assert f"#SBATCH --ntasks-per-node={gpus}\n" in script and f"#SBATCH --gpus-per-node={gpus}\n" in script
    assert words.get("trainer.devices", gpus) == gpus
    partition = words.get("hydra.launcher.partition")
    assert (f"#SBATCH --partition={partition}\n" in script) if partition else "--partition" not in script
    assert f"#SBATCH --array=0-{n - 1}%{min(n, 64)}" in script   # one array task per sweep job
    assert f"#SBATCH --output={sweep.resolve()}/.submitit/%A_%a/%A_%a_0_log.out" in script
    assert "srun" in script and "submitit.core._submit" in script
    pickled = sorted((sweep / ".submitit").glob("*/*_submitted.pkl"))
    assert len(pickled) == n
