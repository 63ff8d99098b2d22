"""The baseline rows through the real configs: supervised, context prediction, context encoder,
Krähenbühl and Gaussian inits; every trunk is probed by the same harness."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import TINY_TRUNK, probe_pretrained, synthetic_batch, tiny_overrides, train_losses

from ssl_bench.models.alexnet import alexnet_small
from ssl_bench.models.checkpoint import read_checkpoint
from ssl_bench.pretext.supervised import SupervisedPretext


def test_supervised_loss_falls_on_synthetic_labels():
    torch.manual_seed(0)
    images, labels = synthetic_batch(48, classes=4)
    model = SupervisedPretext(alexnet_small(input_space="rgb", **TINY_TRUNK), torch.optim.Adam,
                              num_classes=int(labels.max()) + 1)

    def loss(_: int) -> torch.Tensor:
        idx = torch.randperm(48)[:16]
        return torch.nn.functional.cross_entropy(model(images[idx]), labels[idx])
    losses = train_losses(loss, torch.optim.Adam(model.parameters(), lr=2e-3), 40)
    assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:8])


def test_supervised_rejects_unlabelled_data_and_wrong_trunk():
    with pytest.raises(ValueError, match="num_classes"):
        SupervisedPretext(alexnet_small(input_space="rgb"), torch.optim.Adam, num_classes=0)
    with pytest.raises(ValueError, match="input_space"):
        SupervisedPretext(alexnet_small(input_space="L"), torch.optim.Adam, num_classes=3)
    model = SupervisedPretext(alexnet_small(input_space="rgb", **TINY_TRUNK), torch.optim.Adam, num_classes=3)
    batch = {"image": torch.zeros(2, 3, 64, 64, dtype=torch.uint8), "label": torch.tensor([-1, -1]),
             "skipped": []}
    with pytest.raises(ValueError, match="data.layout"):
        model.training_step(batch, 0)


def test_supervised_counts_the_classes_of_the_data():
    from types import SimpleNamespace
    labelled, unlabelled = SimpleNamespace(num_classes=7, root="r"), SimpleNamespace(num_classes=0, root="r")
    assert SupervisedPretext.data_arguments(labelled, "cache", {"num_classes": None}) == {"num_classes": 7}
    assert SupervisedPretext.data_arguments(unlabelled, "cache", {"num_classes": 3}) == {}  # given: kept
    with pytest.raises(ValueError, match="needs labels.*data.layout=imagefolder"):
        SupervisedPretext.data_arguments(unlabelled, "cache", {"num_classes": None})


BASELINES = {
    "supervised": (["pretext=supervised"], "supervised", False),
    "context_prediction": (["experiment=demo_context_prediction", "pretext.patch_size=12",
                            "pretext.head_channels=32"], "context_prediction/drop", True),
    "context_encoder": (["experiment=demo_context_encoder"], "context_encoder/center", True),
}


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_pretrains_and_its_trunk_is_probed(name, tiny_data, tmp_path, run_cli):
    overrides, method, samples = BASELINES[name]
    out = tmp_path / "run"
    assert run_cli("pretrain", *overrides, *tiny_overrides(tiny_data, out, tmp_path / "cache")) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["method"] == method and record["status"] == "completed"
    assert record["trunk"]["input_space"] == "rgb" and record["init"]["name"] == "gaussian"
    assert np.isfinite(record["metrics"]["pretrain/loss"])
    ckpt = read_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["ssl_bench"]["trunk"]["in_channels"] == 3
    if samples:
        assert (out / "samples" / "final.png").is_file()
    probe = probe_pretrained(run_cli, out, tiny_data, tmp_path)
    assert probe["method"] == method and 0 <= probe["metrics"]["probe/conv5/top1"] <= 100


def test_colorization_starts_from_run_init(tiny_data, tmp_path, run_cli):
    out = tmp_path / "run"
    assert run_cli("pretrain", *tiny_overrides(tiny_data, out, tmp_path / "cache"), "init.num_images=32",
                   "init.max_patches=2000") == 0
    record = json.loads((out / "results.json").read_text())
    assert record["init"]["name"] == "run_init" and record["trunk"]["input_space"] == "L"


def test_kraehenbuehl_init_is_a_probe_row(tiny_data, tmp_path, run_cli):
    out = tmp_path / "probe"
    assert run_cli("probe", "init=kraehenbuehl", "backbone.input_space=rgb", f"data.root={tiny_data}",
                   "data.synthetic=null", "data.num_workers=0", "probe.epochs=1", "probe.layers=[conv1,conv3]",
                   "backbone.widths=[16,32,48,48,32]", "backbone.fc_channels=64",
                   f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}",
                   "trainer.enable_progress_bar=false") == 0
    assert json.loads((out / "results.json").read_text())["method"] == "kraehenbuehl/rgb"


def test_supervised_on_unlabelled_folder_is_a_clear_error(tiny_data, tmp_path, run_cli, capsys):
    out = tmp_path / "run"
    args = [a for a in tiny_overrides(tiny_data, out, tmp_path / "cache") if not a.startswith("data.root")]
    assert run_cli("pretrain", "pretext=supervised", "data=folder", f"data.root={tiny_data}/train", *args) == 2
    assert "needs labels" in capsys.readouterr().err


def test_unknown_init_in_probe_names_the_choices(tiny_data, tmp_path, run_cli, capsys):
    assert run_cli("probe", "init=xavier", f"data.root={tiny_data}", "data.synthetic=null",
                   f"hydra.run.dir={tmp_path / 'p'}") != 0
    err = capsys.readouterr().err
    assert "init/xavier" in err and "kraehenbuehl" in err
