"""Tests for ssl_bench.transfer.voc_cls: VOC2007 classification fine-tuning on a tiny synthetic tree."""

from __future__ import annotations

import functools
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torchvision import transforms as T1

from ssl_bench.data.images import decode_rgb
from ssl_bench.data.voc import VOC_CLASSES
from ssl_bench.data.voc_synthetic import write_synthetic_voc
from ssl_bench.models.alexnet import alexnet_small
from ssl_bench.transfer.voc_cls import VOCClassificationData, VOCClassificationTask, layer_parameters, masked_bce_loss

CROP, LOAD = 56, 64
TINY = dict(input_space="rgb", widths=(16, 32, 48, 48, 32), fc_channels=64)
SGD = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9)


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return write_synthetic_voc(tmp_path_factory.mktemp("voc"), num_trainval=24, num_test=16, image_size=64)


def data(root: Path, **kw) -> VOCClassificationData:
    return VOCClassificationData(str(root), load_size=LOAD, crop_size=CROP, batch_size=8,
                                 test_batch_size=8, num_workers=0, **kw)


def trainer(max_epochs: int = 2) -> pl.Trainer:
    return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def fc6_run(voc):
    """One 2-epoch fit + 10-crop test with train_from=fc6 on a batch-norm trunk."""
    pl.seed_everything(0, workers=True)
    trunk = alexnet_small(batch_norm=True, **TINY)
    task = VOCClassificationTask(trunk, SGD, train_from="fc6")
    before = snapshot(task)
    dm = data(voc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = trainer(2)
        t.fit(task, datamodule=dm)
        t.test(task, datamodule=dm, verbose=False)
    return task, dm, before, snapshot(task)


def test_fit_and_test_metrics(fc6_run):
    task, _, _, _ = fc6_run
    r = task.results
    p = "voc07/cls_fc6"
    for k in (f"{p}/mAP", f"{p}/mAP_area"):
        assert k in r and 0 <= r[k] <= 100
    aps = [r[f"{p}/AP/{c}"] for c in VOC_CLASSES]
    defined = [a for a in aps if not math.isnan(a)]
    assert len(defined) >= 16 and all(0 <= a <= 100 for a in defined)
    assert r[f"{p}/mAP"] == pytest.approx(np.mean(defined))
    # 11-point and area AP are different summaries of the same curves
    assert r[f"{p}/mAP"] != r[f"{p}/mAP_area"]
    assert r[f"{p}/train_images_per_s"] > 0 and r[f"{p}/test_images_per_s"] > 0
    assert task.test_scores.shape == (16, 20)
    # logged through Lightning too
    assert f"{p}/mAP" in task.trainer.callback_metrics


def test_frozen_means_frozen(fc6_run):
    task, _, before, after = fc6_run
    names = {layer: [n for n, _ in ps] for layer, ps in layer_parameters(task.trunk).items()}
    for key in before:
        layer = key.split(".")[1] if key.startswith("trunk.") else key.split(".")[0]
        if layer in ("conv1", "conv2", "conv3", "conv4", "conv5"):
            assert torch.equal(before[key], after[key]), f"{key} moved although frozen"
    # BN running stats exist in the frozen layers (so the check above covers them)
    assert any("running_mean" in k and k.startswith("trunk.conv3") for k in before)
    for layer in ("fc6", "fc7"):
        assert any(not torch.equal(before[f"trunk.{n}"], after[f"trunk.{n}"]) for n in names[layer])
        assert not torch.equal(before[f"trunk.{layer}.1.running_mean"], after[f"trunk.{layer}.1.running_mean"])
    assert not torch.equal(before["fc8.weight"], after["fc8.weight"])
    # the optimiser only ever saw fc6, fc7, fc8
    opt = task.trainer.optimizers[0]
    owned = {id(p) for g in opt.param_groups for p in g["params"]}
    expected = {id(p) for layer in ("fc6", "fc7") for _, p in layer_parameters(task.trunk)[layer]}
    expected |= {id(p) for p in task.fc8.parameters()}
    assert owned == expected


def test_train_from_conv1_trains_everything(voc):
    pl.seed_everything(1)
    task = VOCClassificationTask(alexnet_small(batch_norm=True, **TINY), SGD, train_from="conv1")
    before = snapshot(task)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pl.Trainer(max_epochs=1, max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False).fit(task, datamodule=data(voc))
    after = snapshot(task)
    assert not torch.equal(before["trunk.conv1.0.weight"], after["trunk.conv1.0.weight"])
    assert not torch.equal(before["trunk.conv1.1.running_mean"], after["trunk.conv1.1.running_mean"])
    assert "voc07/cls_all/train_images_per_s" in task.results


def test_train_from_validated_and_wrapper_groups():
    with pytest.raises(ValueError, match="finetune.train_from"):
        VOCClassificationTask(alexnet_small(**TINY), SGD, train_from="conv3")

    class LabWrapper(torch.nn.Module):  # a colour wrapper: trunk.trunk + conv1_ab
        def __init__(self) -> None:
            super().__init__()
            self.trunk = alexnet_small(input_space="L", widths=(16, 32, 48, 48, 32), fc_channels=64)
            self.conv1_ab = torch.nn.Conv2d(2, 16, 11, 4, 5)
            self.input_space, self.out_channels = "lab", self.trunk.out_channels

        def forward_features(self, x, layers):
            return self.trunk.forward_features(x[:, :1], layers)

    w = LabWrapper()
    task = VOCClassificationTask(w, SGD, train_from="fc6")
    assert not w.conv1_ab.weight.requires_grad and not w.trunk.conv5[0].weight.requires_grad
    assert w.trunk.fc6[0].weight.requires_grad
    task.train()
    assert not w.conv1_ab.training and not w.trunk.conv1.training and w.trunk.fc7.training
    groups = layer_parameters(w)
    assert {n for n, _ in groups["conv1"]} == {"trunk.conv1.0.weight", "trunk.conv1.0.bias",
                                               "conv1_ab.weight", "conv1_ab.bias"}
    out = task(torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8))
    assert out.shape == (2, 20)


def test_loss_ignores_difficult():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([[1, 0, -1, 1], [-1, -1, 0, 1], [0, 1, -1, -1]], dtype=torch.int8)
    logits = torch.randn(3, 4, generator=g)
    loss = masked_bce_loss(logits, labels)
    # changing the logit of a difficult entry changes nothing (value and gradient)
    other = logits.clone()
    other[labels == 0] = torch.tensor([50.0, -30.0, 7.0])
    assert torch.equal(masked_bce_loss(other, labels), loss)
    x = logits.clone().requires_grad_(True)
    masked_bce_loss(x, labels).backward()
    assert torch.all(x.grad[labels == 0] == 0) and torch.all(x.grad[labels != 0] != 0)
    # brute force: mean over the non-difficult entries
    terms = []
    for i in range(3):
        for j in range(4):
            if labels[i, j] == 0:
                continue
            p = torch.sigmoid(logits[i, j]).double()
            terms.append(-math.log(p) if labels[i, j] == 1 else -math.log(1 - p))
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # all difficult: zero, not nan
    assert masked_bce_loss(logits, torch.zeros_like(labels)).item() == 0.0


def test_ten_crop_matches_torchvision_and_scores_average(fc6_run, voc):
    task, dm, _, _ = fc6_run
    ds = dm.test_set
    crops, label = ds[0]
    assert crops.shape == (10, 3, CROP, CROP) and crops.dtype == torch.uint8
    img = decode_rgb(ds.paths[0])
    resized = T1.Resize(LOAD, antialias=True)(img)
    expected = torch.stack(T1.TenCrop(CROP)(resized))
    assert torch.equal(crops, expected)
    assert torch.equal(crops[9], expected[4].flip(-1))  # mirrored centre crop
    # the test score of image 0 is the mean over its crops, each scored alone
    task.eval()
    with torch.no_grad():
        manual = torch.stack([task(c[None])[0] for c in crops]).mean(0)
    assert np.allclose(task.test_scores[0], manual.double().numpy(), atol=1e-5)
    assert np.array_equal(task.test_labels[0], label.numpy())


def test_train_transform_shapes(voc):
    dm = data(voc)
    dm.setup("fit")
    img, lab = dm.train_set[0]
    assert img.shape == (3, CROP, CROP) and img.dtype == torch.uint8 and lab.shape == (20,)


def test_missing_split_or_year_or_image(voc, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/nosuch\.txt"):
        data(voc, test_split="nosuch")
    with pytest.raises(FileNotFoundError, match="VOC2012"):
        data(voc, year="2012")  # given the VOC2007 folder itself
    with pytest.raises(FileNotFoundError, match="VOC2012"):
        data(voc.parent.parent, year="2012")
    # an image set naming a missing image: the error names the file
    copy = tmp_path / "VOC2007"
    shutil.copytree(voc, copy)
    first = (copy / "ImageSets" / "Main" / "test.txt").read_text().split()[0]
    (copy / "JPEGImages" / f"{first}.jpg").unlink()
    dm = data(copy)
    with pytest.raises(FileNotFoundError, match=f"{first}.jpg"):
        dm.setup("test")


def test_unreadable_image_is_skipped(voc, tmp_path):
    copy = tmp_path / "VOC2007"
    shutil.copytree(voc, copy)
    first = (copy / "ImageSets" / "Main" / "test.txt").read_text().split()[0]
    (copy / "JPEGImages" / f"{first}.jpg").write_bytes(b"not a jpeg")
    dm = data(copy)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape[1:] == (10, 3, CROP, CROP)
    assert len(batch["skipped"]) == 1 and batch["image"].shape[0] == 7


def _trainval_map(voc: Path, epochs: int) -> float:
    """11-point mAP on trainval (10-crop test) after ``epochs`` of train_from=conv1 fine-tuning on it;
    the same seed gives the same initial network for every ``epochs``."""
    pl.seed_everything(0, workers=True)
    task = VOCClassificationTask(alexnet_small(**TINY), functools.partial(torch.optim.Adam, lr=1e-3),
                                 train_from="conv1")
    dm = data(voc, test_split="trainval")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = trainer(epochs)
        if epochs:
            t.fit(task, datamodule=dm)
        t.test(task, datamodule=dm, verbose=False)
    return task.results["voc07/cls_all/mAP"]


def test_fine_tuning_learns_the_training_labels(voc):
    """The fit must learn, not just run: the untrained network (fixed seed) ranks the 24 trainval
    images near chance (measured mAP 16.0; 16-24 over seeds 0-2), 150 epochs of fine-tuning on them
    lift it far above (measured 99.2; 93.9-99.2 over seeds 0-2).  Labels detached from their images
    would keep it near chance."""
    untrained, trained = _trainval_map(voc, 0), _trainval_map(voc, 150)
    assert untrained < 40.0, untrained
    assert trained > 80.0 and trained > untrained + 40.0, (untrained, trained)
