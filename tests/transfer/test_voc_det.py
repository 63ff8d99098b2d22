"""VOC detection fine-tuning: dataset, AP rules, a tiny CPU fit/test, an L trunk."""

from __future__ import annotations

import functools
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_bench.data.voc import VOC_CLASSES
from ssl_bench.data.voc_synthetic import write_synthetic_voc
from ssl_bench.models.alexnet import alexnet_small
from ssl_bench.transfer.voc_det import (
    VOCDetectionData,
    VOCDetectionDataset,
    VOCDetectionTask,
    _class_ap,
    collate_detection,
    evaluate_detections,
    hflip_detection,
)


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return write_synthetic_voc(tmp_path_factory.mktemp("voc"), num_trainval=12, num_test=8, image_size=96)


def tiny_trunk(space: str = "rgb"):
    torch.manual_seed(0)
    return alexnet_small(input_space=space, widths=(16, 32, 48, 48, 32), fc_channels=64, fc6_kernel=3)


def sgd():
    return functools.partial(torch.optim.SGD, lr=1e-3, momentum=0.9)


# ------------------------------------------------------------------------------------ dataset

def test_dataset_matches_xml(voc: Path) -> None:
    ds = VOCDetectionDataset(voc, split="trainval")
    assert len(ds) == 12 and ds.skipped_annotations == 0
    seen_difficult = False
    for i in range(len(ds)):
        img, t = ds[i]
        root = ET.parse(voc / "Annotations" / f"{t['image_id']}.xml").getroot()
        objs = root.findall("object")
        want = np.array([[float(o.find("bndbox").find(k).text) - 1 for k in ("xmin", "ymin", "xmax", "ymax")]
                         for o in objs], dtype=np.float32)
        assert img.dtype == torch.uint8 and img.shape == (3, 96, 96)
        assert t["boxes"].dtype == torch.float32 and np.array_equal(t["boxes"].numpy(), want)
        assert t["labels"].tolist() == [VOC_CLASSES.index(o.find("name").text) + 1 for o in objs]
        assert ((t["labels"] >= 1) & (t["labels"] <= 20)).all()
        diff = [o.find("difficult").text == "1" for o in objs]
        assert t["difficult"].tolist() == diff and t["train_keep"].tolist() == [not d for d in diff]
        seen_difficult |= any(diff)
    assert seen_difficult  # the synthetic tree has difficult boxes, and they are kept


def test_hflip_boxes() -> None:
    img = torch.zeros(3, 4, 10, dtype=torch.uint8)
    img[:, 1, 2] = 255
    t = {"boxes": torch.tensor([[2.0, 1.0, 2.0, 1.0]])}
    out, t2 = hflip_detection(img, t, p=1.0)
    assert out[0, 1, 7] == 255 and t2["boxes"].tolist() == [[7.0, 1.0, 7.0, 1.0]]


def test_malformed_xml_skipped_and_missing_split(tmp_path: Path) -> None:
    root = write_synthetic_voc(tmp_path, num_trainval=4, num_test=2, image_size=64)
    bad = sorted((root / "ImageSets/Main/trainval.txt").read_text().split())[1]
    (root / "Annotations" / f"{bad}.xml").write_text("<annotation><size>")
    with pytest.warns(UserWarning, match="skipped 1 image"):
        ds = VOCDetectionDataset(root, split="trainval")
    assert len(ds) == 3 and ds.skipped_annotations == 1 and ds.skipped_ids == [bad]
    with pytest.raises(FileNotFoundError, match="nosuchsplit.txt"):
        VOCDetectionDataset(root, split="nosuchsplit")
    # an unreadable image is skipped in the collate
    good = sorted((root / "ImageSets/Main/test.txt").read_text().split())[0]
    (root / "JPEGImages" / f"{good}.jpg").write_bytes(b"not a jpeg")
    ds = VOCDetectionDataset(root, split="test")
    batch = collate_detection([ds[0], ds[1]])
    assert len(batch["images"]) == 1 and batch["skipped"] == [str(root / "JPEGImages" / f"{good}.jpg")]
    (root / "JPEGImages" / f"{good}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=f"{good}.jpg"):
        VOCDetectionDataset(root, split="test")


# ------------------------------------------------------------------------------------ AP rules

GT = {"a": (np.array([[0, 0, 9, 9], [20, 20, 29, 29]], float), np.array([False, True])),
      "b": (np.array([[0, 0, 9, 9]], float), np.array([False]))}


@pytest.mark.parametrize("ap_fn", [_class_ap])
def test_class_ap_rules(ap_fn) -> None:
    perfect = [("a", 0.9, [0, 0, 9, 9]), ("b", 0.8, [0, 0, 9, 9])]
    assert ap_fn(perfect, GT) == pytest.approx(1.0)
    # a detection of the difficult box is ignored (neither TP nor FP)
    assert ap_fn([("a", 0.95, [20, 20, 29, 29])] + perfect, GT) == pytest.approx(1.0)
    # a duplicate is a false positive: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    assert ap_fn([perfect[0], ("a", 0.85, [0, 0, 9, 9]), perfect[1]], GT) == pytest.approx(6 / 11 + 5 / 11 * 2 / 3)
    # duplicate ranked first among TPs: TP, FP -> recall 1/2 only: 6 of 11 points at precision 1
    assert ap_fn([perfect[0], ("a", 0.85, [1, 0, 9, 9])], GT) == pytest.approx(6 / 11)
    # IoU exactly 0.5 is not a match (strictly greater): box 0..9 vs 0..4 x 0..9 -> IoU 0.5
    assert ap_fn([("b", 1.0, [0, 0, 4, 9])], {"b": GT["b"]}) == 0.0
    assert math.isnan(ap_fn([("a", 1.0, [0, 0, 9, 9])], {"a": (np.zeros((1, 4)), np.array([True]))}))


def test_perfect_detector_map_100(voc: Path) -> None:
    ds = VOCDetectionDataset(voc, split="test")
    gts = [{k: t[k] for k in ("image_id", "boxes", "labels", "difficult")} for _, t in (ds[i] for i in range(len(ds)))]
    dets = [{"image_id": g["image_id"], "boxes": g["boxes"], "labels": g["labels"],
             "scores": np.ones(len(g["labels"]))} for g in gts]
    res, excluded = evaluate_detections(dets, gts, "2007")
    assert res["voc07/det/mAP"] == pytest.approx(100.0)
    assert len(res) - 1 + len(excluded) == 20
    assert all(v == pytest.approx(100.0) for v in res.values())


# ------------------------------------------------------------------------------------ model

def test_fit_and_test_tiny(voc: Path, tmp_path: Path) -> None:
    import pytorch_lightning as pl
    pl.seed_everything(0)
    dm = VOCDetectionData(voc, min_size=96, max_size=128, batch_size=2, num_workers=0)
    task = VOCDetectionTask(tiny_trunk(), sgd(), min_size=96, max_size=128, anchor_sizes=((16, 32, 64),),
                            rpn_batch_size_per_image=64, box_batch_size_per_image=32)
    losses = []

    class Grab(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = pl.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Grab()],
                         default_root_dir=str(tmp_path))
    trainer.fit(task, datamodule=dm)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    trainer.test(task, datamodule=dm, verbose=False)
    m = task.results["voc07/det/mAP"]
    assert 0.0 <= m <= 100.0
    assert all(k.startswith("voc07/det/") for k in task.results)


def test_l_trunk_one_step() -> None:
    task = VOCDetectionTask(tiny_trunk("L"), sgd(), min_size=64, max_size=96, anchor_sizes=((16, 32),),
                            rpn_batch_size_per_image=32, box_batch_size_per_image=16)
    assert task.model.transform.image_mean == [0.0] and task.model.transform.image_std == [1.0]
    task.train()
    images = [torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8),
              torch.randint(0, 256, (3, 70, 64), dtype=torch.uint8)]
    targets = [{"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0], [10, 10, 10, 20]]), "labels": torch.tensor([3, 7]),
                "difficult": torch.tensor([False, False]), "image_id": "x"},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                "difficult": torch.zeros(0, dtype=torch.bool), "image_id": "y"}]
    opt = torch.optim.SGD(task.parameters(), lr=1e-3)
    losses = task.model(task._inputs(images), task.training_targets(targets))
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    task.eval()
    with torch.no_grad():
        out = task(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4


def test_fc6_size_checked() -> None:
    with pytest.raises(ValueError, match="fc6 reads"):
        VOCDetectionTask(tiny_trunk(), sgd(), fc6=torch.nn.Linear(10, 64))
