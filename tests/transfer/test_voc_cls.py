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
from ssl_bench.transfer.voc_cls import (
    PAD_PIXEL,
    RandomScaleCrop,
    VOCClassificationData,
    VOCClassificationTask,
    layer_parameters,
    masked_bce_loss,
    sklearn_map,
)

CROP, LOAD = 56, 64
TINY = dict(input_space="rgb", widths=(16, 32, 48, 48, 32), fc_channels=64)
SGD = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9)


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return write_synthetic_voc(tmp_path_factory.mktemp("voc"), num_trainval=24, num_test=16, image_size=64)


def data(root: Path, **kw) -> VOCClassificationData:
    return VOCClassificationData(str(root), **{"load_size": LOAD, "crop_size": CROP, "batch_size": 8,
                                               "test_batch_size": 8, "num_workers": 0, **kw})


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
    # the headline (fast recipe: 11-point) and the authors' metric, recomputed here with scikit-learn
    assert r[f"{p}/mAP"] == r[f"{p}/mAP_voc07"]
    assert r[f"{p}/mAP_sklearn"] == pytest.approx(100 * _sklearn_reference(task.test_scores, task.test_labels))
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
    with pytest.raises(ValueError, match=r"task\.module\.train_from"):
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
    crops, (label, index) = ds[0]
    assert crops.shape == (10, 3, CROP, CROP) and crops.dtype == torch.uint8 and index == 0
    img = decode_rgb(ds.base.paths[0])
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


# ------------------------------------------------------------------------------------ the paper recipe


def _sklearn_reference(scores: np.ndarray, labels: np.ndarray) -> float:
    """Krähenbühl's evaluation, written out: per class with a positive, sklearn AP over the labels != 0,
    each positive's score lowered by 1e-5."""
    from sklearn.metrics import average_precision_score
    aps = []
    for c in range(labels.shape[1]):
        keep = labels[:, c] != 0
        y = labels[keep, c] > 0
        if y.any():
            aps.append(average_precision_score(y, scores[keep, c] - 1e-5 * y))
    return float(np.mean(aps))


def test_sklearn_map_literal_values():
    # class 0: ranks TP, FP, TP (the difficult image dropped): AP = 0.5 * 1 + 0.5 * 2/3; class 1: a tie of
    # a positive and a negative counts against the positive: ranks FP, TP -> AP 0.5; class 2: no positive
    scores = np.array([[0.9, 0.5, 0.1], [0.8, 0.5, 0.2], [0.7, 0.1, 0.3], [0.95, 0.0, 0.4]])
    labels = np.array([[1, 1, -1], [-1, -1, -1], [1, -1, -1], [0, -1, 0]])
    m, aps = sklearn_map(scores, labels)
    assert aps[0] == pytest.approx(0.5 + 1 / 3) and aps[1] == pytest.approx(0.5) and math.isnan(aps[2])
    assert m == pytest.approx((0.5 + 1 / 3 + 0.5) / 2)


def test_loss_normalised_by_batch_size():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    labels = torch.tensor([[1, 0], [-1, 0]], dtype=torch.int8)
    # kept entries: (0,0) target 1 at logit 0 -> log 2; (1,0) target 0 at logit 1 -> log(1 + e)
    total = math.log(2) + math.log(1 + math.e)
    assert masked_bce_loss(logits, labels, "batch").item() == pytest.approx(total / 2)
    assert masked_bce_loss(logits, labels, "kept").item() == pytest.approx(total / 2)
    labels[0, 1] = 1  # a third kept entry: the batch mean still divides by 2 images, the other by 3 entries
    total += math.log(1 + math.exp(-2))
    assert masked_bce_loss(logits, labels, "batch").item() == pytest.approx(total / 2)
    assert masked_bce_loss(logits, labels, "kept").item() == pytest.approx(total / 3)


def test_random_scale_crop_is_a_window_of_the_scaled_image():
    # pixel values encode the position, so a crop at scale 1 is one exact window (or its mirror)
    yy, xx = torch.meshgrid(torch.arange(40), torch.arange(50), indexing="ij")
    img = torch.stack([yy, xx, torch.zeros_like(yy)]).to(torch.uint8)
    crop = RandomScaleCrop(16, (1.0, 1.0))
    seen_mirror = False
    for seed in range(20):
        out = crop(img, torch.Generator().manual_seed(seed))
        if out[1, 0, 0] > out[1, 0, -1]:
            out, seen_mirror = out.flip(-1), True
        top, left = int(out[0, 0, 0]), int(out[1, 0, 0])
        assert torch.equal(out, img[:, top:top + 16, left:left + 16])
    assert seen_mirror
    # the same generator seed gives the same crop; scale 2 doubles the image before cropping
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(crop(img, g()), crop(img, g()))
    flat = torch.full((3, 10, 10), 7, dtype=torch.uint8)
    assert torch.equal(RandomScaleCrop(16, (2.0, 2.0))(flat, g()), torch.full((3, 16, 16), 7, dtype=torch.uint8))
    # smaller than the crop at scale 0.5: padded with the mean pixel around the 5 x 5 image
    small = RandomScaleCrop(16, (0.5, 0.5), mirror=False)(flat, g())
    assert small.shape == (3, 16, 16) and int((small == 7).all(0).sum()) == 25
    assert tuple(small[:, 0, 0].tolist()) == PAD_PIXEL


def test_random_test_crops_depend_on_seed_and_index_only(voc):
    def crops(seed: int, index: int) -> tuple[torch.Tensor, int]:
        dm = data(voc, augment="random_scale", test_augment="random_scale", test_crops=3, scale_range=(0.5, 2.0),
                  load_size=None, seed=seed)
        dm.setup("test")
        img, (_, i) = dm.test_set[index]
        return img, i

    a, i = crops(0, 5)
    assert a.shape == (3, 3, CROP, CROP) and i == 5 and torch.equal(a, crops(0, 5)[0])
    assert not torch.equal(a[0], a[1])  # three different draws
    assert not torch.equal(a, crops(1, 5)[0])


def test_paper_optimiser_groups_bias_multipliers_and_fc8_init():
    task = VOCClassificationTask(alexnet_small(**TINY), functools.partial(torch.optim.SGD, lr=1e-3, momentum=0.9,
                                                                          weight_decay=1e-6),
                                 functools.partial(torch.optim.lr_scheduler.StepLR, step_size=10, gamma=0.5),
                                 train_from="fc6-8", bias_lr_mult=2.0, bias_decay_mult=0.0, fc8_bias=0.1)
    assert torch.all(task.fc8.bias == 0.1) and task.train_from == "fc6"
    spec = task.configure_optimizers()
    opt, sched = spec["optimizer"], spec["lr_scheduler"]["scheduler"]
    weights, biases = opt.param_groups
    names = {id(p): n for n, p in task.named_parameters()}
    assert sorted(names[id(p)] for p in biases["params"]) == ["fc8.bias", "trunk.fc6.0.bias", "trunk.fc7.0.bias"]
    assert "trunk.conv5.0.weight" not in {names[id(p)] for p in weights["params"]}  # frozen: never in it
    assert (weights["lr"], biases["lr"]) == (1e-3, 2e-3)
    assert (weights["weight_decay"], biases["weight_decay"]) == (1e-6, 0.0)
    for _ in range(10):
        opt.step()
        sched.step()
    assert (weights["lr"], biases["lr"]) == pytest.approx((5e-4, 1e-3))  # x0.5 after 10 iterations
