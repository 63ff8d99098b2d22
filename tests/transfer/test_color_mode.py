"""Colour-mode fine-tuning (an L trunk plus a zero-initialised ab branch): the ab branch trains in an
all-layers run, and stays frozen when only fc6-8 train."""

from __future__ import annotations

import functools
import warnings

import pytest
import pytorch_lightning as pl
import torch

from ssl_bench.data.voc_synthetic import write_synthetic_voc
from ssl_bench.models.alexnet import alexnet_small
from ssl_bench.models.prepare import prepare_for_transfer
from ssl_bench.transfer.voc_cls import VOCClassificationData, VOCClassificationTask

SGD = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return write_synthetic_voc(tmp_path_factory.mktemp("voc"), num_trainval=16, num_test=8, image_size=64)


def fine_tune(voc, train_from: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """Two SGD steps of VOC classification on a colour-mode trunk; returns it and its weights before."""
    pl.seed_everything(0)
    l_trunk = alexnet_small(input_space="L", widths=(16, 32, 48, 48, 32), fc_channels=64, batch_norm=True)
    trunk = prepare_for_transfer(l_trunk, "color", rescale="none")
    assert trunk.input_space == "lab" and torch.count_nonzero(trunk.conv1_ab.weight) == 0
    task = VOCClassificationTask(trunk, SGD, train_from=train_from)
    before = {k: v.detach().clone() for k, v in trunk.state_dict().items()}
    dm = VOCClassificationData(str(voc), load_size=64, crop_size=56, batch_size=8, test_batch_size=8, num_workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False).fit(task, datamodule=dm)
    return trunk, before


def test_ab_branch_trains_in_an_all_layers_run(voc):
    trunk, before = fine_tune(voc, "conv1")
    w = trunk.conv1_ab.weight.detach()
    assert torch.count_nonzero(w) > 0.5 * w.numel(), "the ab branch left zero"
    assert not torch.equal(before["trunk.conv1.0.weight"], trunk.state_dict()["trunk.conv1.0.weight"])
    # and it now reads colour: the same L with other ab gives other conv1 responses
    x = torch.randn(2, 3, 56, 56)
    grey = x.clone()
    grey[:, 1:] = 0
    with torch.no_grad():
        colour, plain = (trunk.eval().forward_features(v, ["conv1"])["conv1"] for v in (x, grey))
    assert (colour - plain).abs().max() > 1e-4


def test_ab_branch_stays_zero_when_only_fc_layers_train(voc):
    trunk, before = fine_tune(voc, "fc6")
    assert torch.count_nonzero(trunk.conv1_ab.weight) == 0
    state = trunk.state_dict()
    assert torch.equal(before["trunk.conv1.0.weight"], state["trunk.conv1.0.weight"])
    assert not torch.equal(before["trunk.fc6.0.weight"], state["trunk.fc6.0.weight"])
