"""ssl-bench finetune through the real configs, shrunk: every VOC task on the synthetic VOC tree,
weight preparation from a suite checkpoint, and the leaderboard's VOC row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import tiny_overrides

from ssl_bench.report.collect import collect
from ssl_bench.report.table import build_table

TINY = ["backbone=alexnet_small", "backbone.widths=[16,32,48,48,32]", "backbone.fc_channels=64"]
TASK_SIZES = {
    "voc_cls": ["task.datamodule.load_size=64", "task.datamodule.crop_size=56", "task.datamodule.batch_size=8",
                "task.datamodule.test_batch_size=4"],
    "voc_det": ["task.datamodule.min_size=64", "task.datamodule.max_size=96", "task.datamodule.batch_size=2"],
    "voc_seg": ["task.datamodule.crop_size=64", "task.datamodule.batch_size=4"],
}
METRIC = {"voc_cls": "voc07/cls_fc6/mAP", "voc_det": "voc07/det/mAP", "voc_seg": "voc12/seg/mIoU"}


def finetune_args(task: str, out: Path, tmp_path: Path) -> list[str]:
    return [f"task={task}", "voc_root=synthetic", "synthetic_voc.num_trainval=16", "synthetic_voc.num_test=8",
            "synthetic_voc.image_size=64", f"paths.data_dir={tmp_path / 'data'}",
            f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}", "task.datamodule.num_workers=0",
            "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0",
            "finetune.rescale_images=8", "finetune.rescale_size=64", *TASK_SIZES[task]]


@pytest.mark.parametrize("task", ["voc_cls", "voc_det", "voc_seg"])
def test_each_task_runs_on_the_synthetic_voc_tree(task, tmp_path, run_cli):
    out = tmp_path / "ft"
    assert run_cli("finetune", "init=gaussian", "backbone.input_space=rgb", *TINY,
                   *finetune_args(task, out, tmp_path)) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["kind"] == "finetune" and record["method"] == "gaussian/rgb"
    assert 0.0 <= record["metrics"][METRIC[task]] <= 100.0
    assert record["trunk"]["rescaled"] and record["trunk"]["absorb_bn"]


def test_colorization_checkpoint_in_color_mode_and_leaderboard_row(tiny_data, tmp_path, run_cli):
    pre = tmp_path / "pre"
    assert run_cli("pretrain", *tiny_overrides(tiny_data, pre, tmp_path / "cache"), "init=gaussian") == 0
    ckpt = pre / "checkpoints" / "last.ckpt"
    runs = tmp_path / "runs"
    for task, extra in (("voc_cls", []), ("voc_cls", ["task.module.train_from=conv1"]), ("voc_seg", [])):
        out = runs / f"{task}_{len(extra)}"
        assert run_cli("finetune", f"checkpoint={ckpt}", "finetune.mode=color", *extra,
                       *finetune_args(task, out, tmp_path)) == 0
        record = json.loads((out / "results.json").read_text())
        assert record["method"] == "colorization/full" and record["trunk"]["input_space"] == "lab"
    table = build_table(collect([runs]), published=False)
    voc = table.section("voc")
    assert voc is not None and len(voc.rows) == 1  # one trunk: its tasks fill one row
    assert {"cls_fc6", "cls_all", "seg"} <= set(voc.rows[0].cells)


def test_kraehenbuehl_row_is_initialised_on_voc_train_images(tmp_path, run_cli):
    out = tmp_path / "ft"
    assert run_cli("finetune", "init=kraehenbuehl", "backbone.input_space=rgb", "init.num_images=6", *TINY,
                   *finetune_args("voc_cls", out, tmp_path)) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["method"] == "kraehenbuehl/rgb" and 0.0 <= record["metrics"][METRIC["voc_cls"]] <= 100.0


def test_mode_that_does_not_match_the_trunk_is_a_clear_error(tiny_data, tmp_path, run_cli, capsys):
    pre = tmp_path / "pre"
    assert run_cli("pretrain", *tiny_overrides(tiny_data, pre, tmp_path / "cache"), "init=gaussian") == 0
    assert run_cli("finetune", f"checkpoint={pre / 'checkpoints' / 'last.ckpt'}", "finetune.mode=rgb",
                   *finetune_args("voc_cls", tmp_path / "ft", tmp_path)) == 2
    assert "finetune.mode" in capsys.readouterr().err


def test_missing_voc_year_names_the_path(tmp_path, run_cli, capsys):
    assert run_cli("finetune", "init=gaussian", *TINY, f"voc_root={tmp_path}",
                   f"hydra.run.dir={tmp_path / 'ft'}") == 2
    assert str(tmp_path) in capsys.readouterr().err
