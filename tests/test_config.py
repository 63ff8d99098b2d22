"""Every option of every config group composes with the real configs and builds its object."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from helpers import CONF, ROOT
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

# hydra/ holds Hydra's own settings (test_sweep_folder_needs_no_hydra_runtime below)
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("experiment", "hydra"))
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
EXPERIMENTS = sorted(f.stem for f in (ROOT / "experiments").glob("*.yaml"))


def paths(tmp: Path) -> list[str]:
    # ${hydra:...} is resolved only inside a Hydra run; give the paths explicitly here
    return [f"paths.data_dir={tmp}", f"paths.cache_dir={tmp}", f"paths.log_dir={tmp}",
            f"paths.output_dir={tmp}", f"data.root={tmp}/data"]


def composed(overrides: list[str], primary: str = "pretrain"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(primary, overrides=overrides)
    OmegaConf.resolve(cfg)
    return cfg


def test_groups_are_all_covered():
    assert {"data", "backbone", "pretext", "optimizer", "scheduler", "trainer", "callbacks", "logger", "paths",
            "probe", "init", "task"} <= set(GROUPS)
    assert {"colorization", "context_prediction", "context_encoder", "supervised"} <= {
        f.stem for f in (CONF / "pretext").glob("*.yaml")}
    assert {"demo", "colorization_full", "colorization_class", "colorization_l2"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("group,option", OPTIONS)
def test_option_composes_and_instantiates(group, option, tmp_path):
    extra = []
    if (group, option) == ("scheduler", "piecewise"):
        extra = ["scheduler.boundaries=[10]", "scheduler.values=[1.0,0.1]"]
    if (group, option) == ("probe", "svm_voc07"):
        extra = ["probe.voc_root=synthetic"]
    if (group, option) == ("scheduler", "step"):
        extra = ["scheduler.step_size=10", "scheduler.gamma=0.5"]  # finetune fills them from its recipe
    if (group, option) == ("pretext", "bigan"):
        extra = ["data.crop_size=64"]  # the encoder reads at least the generator's 64 px
    if (group, option) == ("pretext", "split_brain"):
        extra = ["backbone._target_=ssl_bench.models.split_brain.SplitBrainAlexNet"]
    primary = {"probe": "probe_run", "task": "finetune", "preset": "benchmark", "protocol": "probe_run"}.get(
        group, "pretrain")
    if group == "task":
        extra = ["voc_root=synthetic"]
    where = {"task": paths(tmp_path)[:-1],  # finetune has no data group
             "preset": []}.get(group, paths(tmp_path))  # benchmark composes its stages itself
    cfg = composed([f"{group}={option}", *where, *extra], primary)
    node = cfg[group] if group in cfg else cfg  # presets are global (package _global_)
    if group == "probe":
        from ssl_bench.models.alexnet import LAYERS
        from ssl_bench.probe.heads import RESIZE_MODES
        assert set(node.layers) <= set(LAYERS) and node.resize in RESIZE_MODES and node.kind == option
        assert all(set(LAYERS[:5]) <= set(node.pooling[mode]) for mode in RESIZE_MODES)  # conv1..conv5
        assert cfg.optimizer.momentum == 0.9 and cfg.optimizer.weight_decay == 5e-4  # docs/protocols.md §3.1
    elif group == "paths":
        assert set(node) >= {"data_dir", "cache_dir", "log_dir", "output_dir"}
    elif group == "logger":
        for c in node.values():
            assert instantiate(c) is not None
    elif group == "optimizer":
        opt = instantiate(node)([torch.nn.Parameter(torch.zeros(2))])
        assert isinstance(opt, torch.optim.Optimizer)
    elif group == "scheduler":
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
        assert isinstance(instantiate(node), functools.partial)
        instantiate(node)(opt).step()
    elif group == "backbone":
        trunk = instantiate(node)
        assert trunk.forward_features(torch.zeros(1, trunk.in_channels, 64, 64), ("conv5",))["conv5"].ndim == 4
    elif group == "pretext":
        from ssl_bench.models.alexnet import alexnet_small
        extra = {"prior": torch.full((313,), 1 / 313)} if option in ("colorization", "split_brain") else {}
        if option == "supervised":
            extra["num_classes"] = 5
        trunk = instantiate(cfg.backbone) if option == "split_brain" else alexnet_small(input_space=node.input_space)
        module = instantiate(node, trunk=trunk, optimizer=instantiate(cfg.optimizer), **extra)
        assert module.checkpoint_meta["pretext"] == option
        assert module.checkpoint_meta["input_space"] == node.input_space
        # the backbone group follows the pretext's input space
        assert cfg.backbone.input_space == node.input_space
    elif group == "callbacks":
        import pytorch_lightning as pl
        assert all(isinstance(instantiate(c), pl.Callback) for c in node.values())
    elif group == "preset":
        from ssl_bench.runs.benchmark import validate
        validate(cfg)  # every method known, with a valid kind
        assert cfg.preset_name == option and "colorization_full" in cfg.methods
    elif group == "task":
        from hydra.utils import get_method  # a class or a factory (detection picks Fast R-CNN or the RPN one)
        assert node.name == option and callable(get_method(node.module._target_))
        assert callable(get_method(node.datamodule._target_))
        assert node.module.year == node.datamodule.year == {"voc_seg": "2012"}.get(option, "2007")
    elif group == "protocol":
        assert node.name == option and set(cfg.recipe) >= {"resize", "geometry", "crop_size", "batch_size"}
    elif group == "init":
        init = instantiate(node)
        assert init.name in ("gaussian", "kraehenbuehl", "run_init")
    else:
        assert instantiate(node) is not None


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name, tmp_path):
    cfg = composed([f"experiment={name}", *paths(tmp_path)])
    assert cfg.task_name == name
    if "objective" in cfg.pretext:
        instantiate(cfg.pretext.objective)
    instantiate(cfg.backbone)
    if name.startswith("colorization_"):
        assert cfg.backbone.fc_channels == 4096 and cfg.data.batch_size == 80
        assert cfg.optimizer.lr == 3e-5 and cfg.trainer.max_steps == 450_000


# The paper's three colorization variants: the objective each one builds.
VARIANTS = {"full": {"kind": "classification", "rebalance": True},
            "class": {"kind": "classification", "rebalance": False},
            "l2": {"kind": "regression", "rebalance": False}}


def test_ablation_variants(tmp_path):
    from ssl_bench.pretext.colorization import ColorObjective
    objectives = {n: instantiate(composed([f"experiment=colorization_{n}", *paths(tmp_path)]).pretext.objective)
                  for n in VARIANTS}
    assert {n: o.variant for n, o in objectives.items()} == {n: n for n in VARIANTS}
    assert ColorObjective(kind="regression").num_outputs == 2
    with pytest.raises(ValueError, match="pretext.objective.kind"):
        ColorObjective(kind="hinge")


def test_benchmark_methods_build_the_variants_objectives(tmp_path):
    """The benchmark's colorization methods and the paper-scale experiments give the same objectives."""
    from ssl_bench.pretext.colorization import ColorObjective
    bench = composed([], "benchmark")
    for name, settings in VARIANTS.items():
        preset = bench.method_presets[f"colorization_{name}"]
        cfg = composed([*preset.overrides, *paths(tmp_path)])
        expected = ColorObjective(**settings).__dict__
        assert instantiate(cfg.pretext.objective).__dict__ == expected, name
        paper = composed([f"experiment=colorization_{name}", *paths(tmp_path)])
        assert instantiate(paper.pretext.objective).__dict__ == expected, name


def test_default_trunk_follows_the_data(tmp_path):
    assert composed(paths(tmp_path)).backbone.fc_channels == 512  # synthetic: alexnet_small
    assert composed(["data=imagenet", *paths(tmp_path)]).backbone.fc_channels == 4096
    assert composed(["data=folder", "backbone=alexnet_small", *paths(tmp_path)]).backbone.fc_channels == 512


def test_default_init_follows_the_pretext(tmp_path):
    # the authors' colorization net started from run_init.sh (k-means conv1..conv5); the baselines from Gaussian
    assert composed(paths(tmp_path)).init._target_.endswith("RunInit")
    # the demo keeps Krähenbühl's init (its published README rows were measured with it)
    assert composed(["experiment=demo", *paths(tmp_path)]).init._target_.endswith("KraehenbuehlInit")
    for p in ("context_prediction", "context_encoder", "supervised"):
        cfg = composed([f"pretext={p}", *paths(tmp_path)])
        assert cfg.init._target_.endswith("GaussianInit") and "objective" not in cfg.pretext
        assert cfg.backbone.input_space == "rgb" and instantiate(cfg.backbone).in_channels == 3


def test_required_values_are_marked(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("pretrain", overrides=["data=imagenet"])
    assert OmegaConf.is_missing(cfg.data, "root")


@pytest.mark.parametrize("launcher", [None, "local", "slurm"])
@pytest.mark.parametrize("primary", ["pretrain", "probe_run", "finetune", "colorization_eval"])
def test_sweep_folder_needs_no_hydra_runtime(primary, launcher, monkeypatch):
    """A sweep's folder is resolved before Hydra sets its runtime config (HydraConfig): the default
    must not go through ${hydra:runtime.*}, for any command or launcher."""
    monkeypatch.delenv("SSL_BENCH_OUTPUTS", raising=False)
    over = [f"hydra/launcher={launcher}"] if launcher else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(primary, overrides=over, return_hydra_config=True)
    task = {"probe_run": "probe"}.get(primary, primary)
    assert cfg.hydra.sweep.dir.startswith(f"outputs/{task}/multiruns/")
    assert cfg.hydra.run.dir.startswith(f"outputs/{task}/runs/")
    if launcher:
        assert cfg.hydra.launcher.submitit_folder.startswith(cfg.hydra.sweep.dir)


# ------------------------------------------------------------------------------ protocol recipes


def recipe_table(evaluation: str) -> dict[str, tuple[str, str]]:
    """{key: (paper cell, fast cell)} of the recipe table under ``#### <evaluation>`` in docs/protocols.md."""
    text = (ROOT / "docs" / "protocols.md").read_text(encoding="utf-8")
    block = text.split(f"\n#### {evaluation} (", 1)[1].split("\n#", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.splitlines()
            if line.startswith("| ") and not line.startswith("| key ")]
    return {r[0]: (r[1], r[2]) for r in rows}


def doc_value(cell: str, cfg) -> object:
    """A table cell as a value: ``data.<key>`` is the data config's value; the rest is YAML."""
    import yaml
    return OmegaConf.select(cfg, cell) if cell.startswith("data.") else yaml.safe_load(cell)


@pytest.mark.parametrize("evaluation", ["linear", "svm_voc07", "knn"])
def test_probe_recipes_equal_the_tables_of_protocols_md(evaluation, tmp_path):
    from ssl_bench.probe.svm_voc07 import DEFAULT_COSTS
    table = recipe_table(evaluation)
    assert len(table) >= 5
    extra = ["probe.voc_root=synthetic"] if evaluation == "svm_voc07" else []
    for column, protocol in enumerate(("paper", "fast")):
        if evaluation == "knn" and protocol == "paper":
            from ssl_bench.config import compose  # unresolved: the probe's keys have no recipe to follow
            assert compose("probe_run", ["probe=knn", "protocol=paper"]).recipe == {"published": False}
            continue
        cfg = composed([f"probe={evaluation}", f"protocol={protocol}", *paths(tmp_path), *extra], "probe_run")
        assert cfg.protocol.name == protocol
        recipe = OmegaConf.to_container(cfg.recipe)
        documented = {k: cells[column] for k, cells in table.items()}
        if documented.get("costs") == "the 26 costs below":  # written out in the text below the table
            documented.pop("costs")
            assert recipe.pop("costs") == [1e-7, 1e-6, 1e-5, 1e-4, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0] + [
                0.5 ** k for k in range(4, 20)]
            assert sorted(cfg.probe.costs) == DEFAULT_COSTS
        expected = {k: doc_value(v, cfg) for k, v in documented.items()}
        if evaluation == "linear" and protocol == "fast":
            expected["epochs"] = 30  # the table's max_steps row: null, "fast runs `epochs` (30)"
        assert recipe == expected, protocol


def test_paper_probe_recipe_reaches_the_run_config(tmp_path):
    """The job's own keys follow the recipe (so the run reads the paper's values), overrides of either
    spelling land in the same place."""
    cfg = composed(["protocol=paper", *paths(tmp_path)], "probe_run")
    assert (cfg.probe.resize, cfg.probe.cache, cfg.probe.batch_size, list(cfg.probe.lr_grid)) == (
        "bilinear", False, 256, [0.01])
    assert cfg.optimizer.momentum == 0.9 and cfg.optimizer.weight_decay == 0.0005
    assert composed(["protocol=paper", "recipe.batch_size=64", *paths(tmp_path)], "probe_run").probe.batch_size == 64
    svm = composed(["protocol=paper", "probe=svm_voc07", "probe.voc_root=synthetic", *paths(tmp_path)], "probe_run")
    assert (svm.probe.resize, svm.probe.crop_size, svm.probe.max_iter) == ("avgpool", 227, 2000)
