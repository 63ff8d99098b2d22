"""PASCAL VOC detection fine-tuning (Table 4 "Det"): Faster R-CNN on the AlexNet trunk.

The papers fine-tuned Fast R-CNN (Girshick 2015) with selective-search proposals.  Here the detector
is assembled from torchvision's detection components (``FasterRCNN``, ``AnchorGenerator``,
``MultiScaleRoIAlign``), so proposals come from a region proposal network trained jointly with the
box head -- **a documented deviation** (no selective search, and RoIAlign instead of RoI max pooling).

Geometry (the faithful net): the trunk's conv5 map has stride 16; RoIs are pooled from it to a
``k x k`` grid with ``k = trunk.config["fc6_kernel"]`` = **6 -> a 6 x 6 RoI grid on conv5**, exactly
Fast R-CNN's AlexNet/CaffeNet layout (RoI pooling replaces pool5).  The box head is the classic one:
flatten -> fc6 -> ReLU -> dropout 0.5 -> fc7 -> ReLU -> dropout 0.5 -> 21-way classifier + class-
specific box regression (``FastRCNNPredictor``).  fc6/fc7 come from the pretrained trunk
(``ssl_bench.models.prepare.fc_layers``: fc6 reads a flattened C x k x k grid) or are fresh.

Inputs: every trunk has its own input conversion (L - 50, Lab, ImageNet-normalised RGB), so uint8
images go through ``trunk_input`` *before* FasterRCNN, whose transform is told not to renormalise
(mean 0, std 1 per channel; one channel for "L" trunks).  It still resizes each image so its short
side is ``min_size`` (long side at most ``max_size``) and pads the batch.

Boxes: VOC XML boxes are 1-based inclusive pixel coordinates; targets hold them 0-based (minus 1),
still inclusive, as py-faster-rcnn did.  Detections are compared to them with the devkit's inclusive
IoU (``+1`` widths), which is invariant to the common shift.  Training drops ground-truth boxes
marked difficult (py-faster-rcnn's default; ``use_difficult_in_training=True`` keeps them), and a
degenerate 1-pixel-wide box is widened to 1 pixel in continuous coordinates (torchvision rejects
zero-width training boxes).  The reader's policy (``ssl_bench.data.voc``) applies: an unusable
annotation stops the run naming the file; boxes partly outside their image are clipped to it and
counted (``<prefix>/clipped_boxes_train`` / ``_test`` in ``results``).

Metric: per class the VOC2007 devkit's 11-point AP at IoU > 0.5 -- detections sorted by score, each
matched greedily to its best-overlapping GT box of that image; a match to a difficult box is ignored,
a second match to the same box is a false positive (duplicate) -- and mAP over the 20 classes, both
in percent.  A class with no non-difficult GT box in the test split has undefined AP: it is left out
of the mean and of ``results`` (``excluded_classes`` lists it).  On the real VOC2007 test set every
class has positives, so this only matters for small synthetic sets.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.rpn import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from ssl_bench.data.images import DECODE_ERRORS, SkipCounter, decode_rgb
from ssl_bench.data.voc import VOC_CLASSES, read_annotations, voc_root
from ssl_bench.errors import CheckpointError, ConfigError
from ssl_bench.metrics import detection_ap, voc_prefix
from ssl_bench.models.inputs import trunk_input
from ssl_bench.pretext.common import check_finite, configure_optimizers
from ssl_bench.transfer.loaders import sharded_loader

__all__ = ["VOCDetectionDataset", "VOCDetectionData", "VOCDetectionTask", "collate_detection",
           "hflip_detection", "evaluate_detections", "TrunkBackbone", "box_head", "DetectionEvaluation",
           "detection_data", "detection_task", "trunk_config"]

NUM_CLASSES = len(VOC_CLASSES) + 1  # + background (label 0)


# ------------------------------------------------------------------------------------ data

class VOCDetectionDataset(Dataset):
    """VOC detection: (uint8 3 x H x W image, target) per image of ``ImageSets/Main/<split>.txt``.

    target: {"boxes": float32 N x 4 (x1, y1, x2, y2) 0-based inclusive pixel coordinates (the XML's
    1-based values minus 1), "labels": int64 N in 1..20 (VOC_CLASSES index + 1; 0 is background),
    "difficult": bool N, "train_keep": bool N (the boxes a detector trains on: non-difficult ones,
    or all with ``use_difficult_in_training=True``), "image_id": str}.  Every box is returned, so the
    same items serve evaluation (which needs the difficult ones).

    All annotations are parsed at construction with the shared reader
    (``ssl_bench.data.voc.read_annotations``), so its policy holds: a missing split file, image or
    annotation is a FileNotFoundError, and an unusable annotation (malformed XML, unknown class,
    inverted box, ...) a ValueError, both naming the file -- never a silently smaller data set.
    Boxes partly outside their image are clipped to it; ``clipped_boxes`` counts them (the task
    records it).  An image that exists but cannot be decoded yields ``(None, path)`` and is dropped
    (and counted) by ``collate_detection`` and the task.

    transform: optional ``f(image, target) -> (image, target)`` (e.g. ``hflip_detection``).
    """

    def __init__(self, root: str | Path, year: str | int = "2007", split: str = "trainval",
                 use_difficult_in_training: bool = False,
                 transform: Callable[[Tensor, dict[str, Any]], tuple[Tensor, dict[str, Any]]] | None = None
                 ) -> None:
        self.root = voc_root(root, year)
        self.year, self.split = str(year), split
        self.use_difficult_in_training = bool(use_difficult_in_training)
        self.transform = transform
        self.items: list[tuple[str, Path, dict[str, Any]]] = []
        self.clipped_boxes = 0
        for image_id, img, ann in read_annotations(self.root, year, split):
            self.clipped_boxes += int(ann.clipped.sum())
            difficult = torch.from_numpy(ann.difficult.astype(bool))
            self.items.append((image_id, img, {
                "boxes": torch.from_numpy(ann.boxes.astype(np.float32)).reshape(-1, 4) - 1.0,
                "labels": torch.from_numpy(ann.labels.astype(np.int64)) + 1,
                "difficult": difficult,
                "train_keep": torch.ones_like(difficult) if self.use_difficult_in_training else ~difficult,
                "image_id": image_id,
            }))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]] | tuple[None, str]:
        image_id, path, target = self.items[index]
        try:
            img = decode_rgb(path)
        except DECODE_ERRORS:
            return None, str(path)
        target = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in target.items()}
        if self.transform is not None:
            img, target = self.transform(img, target)
        return img, target


def hflip_detection(image: Tensor, target: dict[str, Any], p: float = 0.5) -> tuple[Tensor, dict[str, Any]]:
    """Mirror the image with probability p; inclusive boxes map x -> W - 1 - x (x1 and x2 swap)."""
    if random.random() >= p:
        return image, target
    w = image.shape[-1]
    b = target["boxes"]
    target = {**target, "boxes": torch.stack([w - 1 - b[:, 2], b[:, 1], w - 1 - b[:, 0], b[:, 3]], dim=1)}
    return image.flip(-1), target


def resize_detection(image: Tensor, target: dict[str, Any], min_size: int, max_size: int
                     ) -> tuple[Tensor, dict[str, Any]]:
    """Scale so the short side is min_size and the long side at most max_size (torchvision's rule),
    boxes scaled along.  Used in training loaders so the resize runs in the workers."""
    h, w = image.shape[-2:]
    scale = min(min_size / min(h, w), max_size / max(h, w))
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) == (h, w):
        return image, target
    image = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", align_corners=False,
                          antialias=True)[0].round_().clamp_(0, 255).to(torch.uint8)
    sx, sy = nw / w, nh / h
    target = {**target, "boxes": target["boxes"] * torch.tensor([sx, sy, sx, sy])}
    return image, target


class _TrainTransform:
    """Resize (optional) then random horizontal flip: picklable for loader workers."""

    def __init__(self, min_size: int | None, max_size: int | None, flip_p: float = 0.5) -> None:
        self.min_size, self.max_size, self.flip_p = min_size, max_size, flip_p

    def __call__(self, image: Tensor, target: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        if self.min_size:
            image, target = resize_detection(image, target, self.min_size, self.max_size or 10 ** 9)
        return hflip_detection(image, target, self.flip_p)


def collate_detection(batch: list[tuple[Any, Any]]) -> dict[str, Any]:
    """{"images": [uint8 3 x H_i x W_i], "targets": [dict], "skipped": [paths]} (sizes vary)."""
    good = [(img, t) for img, t in batch if img is not None]
    return {"images": [g[0] for g in good], "targets": [g[1] for g in good],
            "skipped": [t for img, t in batch if img is None]}


class VOCDetectionData(pl.LightningDataModule):
    """Train on ``train_split`` (resized to min_size/max_size in the workers, random horizontal
    flip), test on ``test_split`` at the original size (the model resizes it and maps detections
    back to original pixel coordinates, where the ground truth lives).  Batches: see
    ``collate_detection``."""

    def __init__(self, root: str | Path, year: str | int = "2007", train_split: str = "trainval",
                 test_split: str = "test", min_size: int = 600, max_size: int = 1000, batch_size: int = 2,
                 num_workers: int = 2, use_difficult_in_training: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)  # the training order (DDP ranks split the same global batches)
        self.root, self.year = root, str(year)
        self.train_split, self.test_split = train_split, test_split
        self.min_size, self.max_size = min_size, max_size
        self.batch_size, self.num_workers = batch_size, num_workers
        self.use_difficult_in_training = use_difficult_in_training
        self.train_set: VOCDetectionDataset | None = None
        self.test_set: VOCDetectionDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = VOCDetectionDataset(self.root, self.year, self.train_split,
                                                 self.use_difficult_in_training,
                                                 transform=_TrainTransform(self.min_size, self.max_size))
        if stage in (None, "test") and self.test_set is None:
            self.test_set = VOCDetectionDataset(self.root, self.year, self.test_split)

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        return sharded_loader(ds, self.batch_size, shuffle, self.seed, collate_detection, self.num_workers)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, True)

    def test_dataloader(self) -> DataLoader:
        self.setup("test")
        return self._loader(self.test_set, False)


# ------------------------------------------------------------------------------------ model

def trunk_config(trunk: nn.Module) -> dict[str, Any]:
    for m in (trunk, getattr(trunk, "trunk", None)):
        cfg = getattr(m, "config", None)
        if isinstance(cfg, Mapping) and "widths" in cfg:
            return dict(cfg)
    return {}


def _input_channels(space: str) -> int:
    return 1 if space == "L" else 3


class TrunkBackbone(nn.Module):
    """Trunk input (already converted by ``trunk_input``) -> conv5 map (stride 16)."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        cfg = trunk_config(trunk)
        if cfg:
            self.out_channels = int(cfg["widths"][4])
        else:  # unknown trunk: measure
            c = _input_channels(trunk.input_space)
            was = trunk.training
            with torch.no_grad():
                trunk.eval()
                self.out_channels = int(trunk.forward_features(torch.zeros(1, c, 64, 64), ("conv5",))
                                        ["conv5"].shape[1])
            trunk.train(was)

    def forward(self, x: Tensor) -> Tensor:
        return self.trunk.forward_features(x, ("conv5",))["conv5"]


def box_head(fc6: nn.Linear, fc7: nn.Linear, dropout: float = 0.5) -> nn.Sequential:
    """Fast R-CNN's AlexNet head on a pooled RoI grid: flatten, fc6, ReLU, dropout, fc7, ReLU, dropout."""
    return nn.Sequential(nn.Flatten(1), fc6, nn.ReLU(inplace=True), nn.Dropout(dropout),
                         fc7, nn.ReLU(inplace=True), nn.Dropout(dropout))


class DetectionEvaluation:
    """The test half shared by the detectors: per image detections and ground truth are gathered
    (over DDP ranks too), scored by ``evaluate_detections`` into ``self.results``, and the clipped
    ground-truth boxes of the datamodule's data sets are counted."""

    year: str

    def init_evaluation(self) -> None:
        self.results: dict[str, float] = {}
        self.excluded_classes: list[str] = []
        self._test_dets: list[dict[str, Any]] = []
        self._test_gts: list[dict[str, Any]] = []

    @property
    def prefix(self) -> str:
        return f"{voc_prefix(self.year)}/det"

    def on_test_epoch_start(self) -> None:
        self._test_dets, self._test_gts = [], []

    def add_test_image(self, det: Mapping[str, Tensor], target: Mapping[str, Any]) -> None:
        """One test image: det {"boxes" D x 4, "scores" D, "labels" D} in original pixels; target its
        ground truth {"image_id", "boxes", "labels", "difficult"}."""
        self._test_dets.append({"image_id": target["image_id"], "boxes": det["boxes"].detach().cpu().numpy(),
                                "scores": det["scores"].detach().cpu().numpy(),
                                "labels": det["labels"].detach().cpu().numpy()})
        self._test_gts.append({"image_id": target["image_id"], "boxes": target["boxes"].cpu().numpy(),
                               "labels": target["labels"].cpu().numpy(),
                               "difficult": target["difficult"].cpu().numpy()})

    def on_test_epoch_end(self) -> None:
        dets, gts = self._test_dets, self._test_gts
        if self.trainer is not None and self.trainer.world_size > 1:
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, (dets, gts))
            dets = [d for part in gathered for d in part[0]]
            gts = [g for part in gathered for g in part[1]]
        self.results, self.excluded_classes = evaluate_detections(dets, gts, self.year)
        self.results.update(self.clipped_box_counts())
        for k, v in self.results.items():
            self.log(k, v, sync_dist=False, rank_zero_only=True)
        self._test_dets, self._test_gts = [], []

    def clipped_box_counts(self) -> dict[str, float]:
        """``<prefix>/clipped_boxes_{train,test}``: ground-truth boxes of the datamodule's data sets
        that reached outside their image and were clipped (so results.json shows how much of the
        ground truth was repaired); empty without a datamodule."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        out = {}
        for name in ("train", "test"):
            ds = getattr(dm, f"{name}_set", None)
            ds = getattr(ds, "base", ds)
            if isinstance(ds, VOCDetectionDataset):
                out[f"{self.prefix}/clipped_boxes_{name}"] = float(ds.clipped_boxes)
        return out


class VOCDetectionTask(DetectionEvaluation, pl.LightningModule):
    """Faster R-CNN fine-tuning of a prepared trunk on VOC detection (see the module docstring).

    Faithful numbers: fc6 kernel 6 -> RoIs pooled to a 6 x 6 grid on conv5 (stride 16); fc6 reads
    256 x 6 x 6 = 9216 inputs, fc6/fc7 have 4096 outputs.  The CPU default (alexnet_small) pools
    3 x 3.

    Args:
        trunk: prepared trunk with ``forward_features(x, ("conv5",))`` and ``input_space``.
        optimizer, scheduler: partial factories (``common.configure_optimizers``), over all parameters.
        fc6, fc7: the box head's layers (fc6.in_features = conv5 width x k x k); None -> fresh ones
            (fc6 -> fc_channels of the trunk config, 4096 if unknown).
        min_size, max_size: torchvision's resize (short side, cap on the long side).
        anchor_sizes, aspect_ratios: the RPN's anchors (one feature map).
        rpn_batch_size_per_image, box_batch_size_per_image: sampled anchors / RoIs per image.
        box_score_thresh, box_detections_per_img: test-time filtering (after per-class NMS 0.5).
        year: VOC year, used in the metric names ``voc{year}/det/...``.
    """

    def __init__(self, trunk: nn.Module, optimizer: Callable[..., Any], scheduler: Callable[..., Any] | None = None,
                 fc6: nn.Linear | None = None, fc7: nn.Linear | None = None, min_size: int = 600,
                 max_size: int = 1000, anchor_sizes: Sequence[Sequence[int]] = ((64, 128, 256, 512),),
                 aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),),
                 rpn_batch_size_per_image: int = 256, box_batch_size_per_image: int = 128,
                 box_score_thresh: float = 0.0, box_detections_per_img: int = 100,
                 year: str | int = "2007") -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["trunk", "optimizer", "scheduler", "fc6", "fc7"])
        space = getattr(trunk, "input_space", None)
        if space is None:
            raise CheckpointError("voc_det: the trunk has no input_space ('L', 'rgb' or 'lab')")
        self.input_space, self.year = space, str(year)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        backbone = TrunkBackbone(trunk)
        cfg = trunk_config(trunk)
        k = int(cfg.get("fc6_kernel", 6))
        c = backbone.out_channels
        if fc6 is None:
            fc6 = nn.Linear(c * k * k, int(cfg.get("fc_channels", 4096)))
        if fc6.in_features != c * k * k:
            raise CheckpointError(f"voc_det: fc6 reads {fc6.in_features} inputs but the RoI grid is conv5 width {c} "
                                  f"x {k} x {k} = {c * k * k} (fc6_kernel={k})")
        if fc7 is None:
            fc7 = nn.Linear(fc6.out_features, fc6.out_features)
        if fc7.in_features != fc6.out_features:
            raise CheckpointError(f"voc_det: fc7 reads {fc7.in_features} inputs but fc6 gives {fc6.out_features}")
        self.roi_grid = k
        n_in = _input_channels(space)
        anchors = AnchorGenerator(sizes=tuple(tuple(s) for s in anchor_sizes),
                                  aspect_ratios=tuple(tuple(a) for a in aspect_ratios))
        self.model = FasterRCNN(
            backbone, num_classes=None, min_size=min_size, max_size=max_size,
            image_mean=[0.0] * n_in, image_std=[1.0] * n_in,
            rpn_anchor_generator=anchors, rpn_batch_size_per_image=rpn_batch_size_per_image,
            box_roi_pool=MultiScaleRoIAlign(featmap_names=["0"], output_size=k, sampling_ratio=2),
            box_head=box_head(fc6, fc7), box_predictor=FastRCNNPredictor(fc7.out_features, NUM_CLASSES),
            box_batch_size_per_image=box_batch_size_per_image, box_score_thresh=box_score_thresh,
            box_detections_per_img=box_detections_per_img)
        self.skips = SkipCounter()
        self.init_evaluation()

    def _inputs(self, images: Sequence[Tensor]) -> list[Tensor]:
        return [trunk_input(img[None].to(self.device), self.input_space)[0] for img in images]

    def forward(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """uint8 3 x H x W images -> detections {"boxes", "labels", "scores"} in original coordinates."""
        return self.model(self._inputs(images))

    @staticmethod
    def training_targets(targets: Sequence[Mapping[str, Any]], device: torch.device | None = None
                         ) -> list[dict[str, Tensor]]:
        """Boxes and labels the detector trains on (``train_keep``; non-difficult by default)."""
        out = []
        for t in targets:
            keep = t.get("train_keep", ~t["difficult"])
            boxes = t["boxes"][keep].float().clone()
            # inclusive 1-pixel boxes have x1 == x2: torchvision needs positive widths
            boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1.0)
            out.append({"boxes": boxes.to(device), "labels": t["labels"][keep].to(device)})
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        self.skips.add(batch["skipped"])
        if not batch["images"]:
            return None
        losses = self.model(self._inputs(batch["images"]), self.training_targets(batch["targets"], self.device))
        loss = sum(losses.values())
        check_finite(loss, self.global_step, f"{self.prefix}/loss")
        n = len(batch["images"])
        self.log(f"{self.prefix}/loss", loss, prog_bar=True, batch_size=n)
        for name, v in losses.items():
            self.log(f"{self.prefix}/{name}", v, batch_size=n)
        return loss

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.skips.add(batch["skipped"])
        if not batch["images"]:
            return
        for d, t in zip(self(batch["images"]), batch["targets"]):
            self.add_test_image(d, t)

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self.parameters(), self.optimizer_factory, self.scheduler_factory)


# ------------------------------------------------------------------------------------ evaluation

def _class_ap(detections: Sequence[tuple[Hashable, float, Sequence[float]]],
              ground_truths: Mapping[Hashable, tuple[np.ndarray, np.ndarray]], use_07_metric: bool = True
              ) -> float:
    """AP in [0, 1] (nan without non-difficult GT) of ONE class at IoU > 0.5: the single switch
    point of the evaluation.  detections: (image_id, score, inclusive box) triples; ground_truths:
    image_id -> (boxes M x 4 inclusive, difficult bool M).  Uses ``metrics.detection_ap``."""
    return detection_ap(list(detections), ground_truths, iou_threshold=0.5, use_07_metric=use_07_metric)


def evaluate_detections(detections: Sequence[Mapping[str, Any]], ground_truths: Sequence[Mapping[str, Any]],
                        year: str | int = "2007") -> tuple[dict[str, float], list[str]]:
    """Per-class AP and mAP (percent) of a test set.

    detections: per image {"image_id", "boxes" K x 4, "scores" K, "labels" K in 1..20};
    ground_truths: per image {"image_id", "boxes" M x 4, "labels" M in 1..20, "difficult" M}, every
    test image once (an image without detections may be absent from ``detections``).
    11-point AP for VOC2007 (the devkit's ``use_07_metric``), area AP for later years.
    Returns ({"voc{year}/det/mAP": %, "voc{year}/det/AP/<class>": %}, excluded classes): classes
    without a non-difficult GT box have undefined AP and are left out of both.
    """
    prefix = f"{voc_prefix(year)}/det"
    use07 = str(year) == "2007"
    gt_per_class: list[dict[Hashable, tuple[np.ndarray, np.ndarray]]] = [{} for _ in VOC_CLASSES]
    for g in ground_truths:
        boxes = np.asarray(g["boxes"], dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(g["labels"]).reshape(-1)
        diff = np.asarray(g["difficult"], dtype=bool).reshape(-1)
        for c in range(len(VOC_CLASSES)):
            m = labels == c + 1
            gt_per_class[c][g["image_id"]] = (boxes[m], diff[m])
    det_per_class: list[list[tuple[Hashable, float, np.ndarray]]] = [[] for _ in VOC_CLASSES]
    for d in detections:
        boxes = np.asarray(d["boxes"], dtype=np.float64).reshape(-1, 4)
        for box, score, label in zip(boxes, np.asarray(d["scores"]).reshape(-1), np.asarray(d["labels"]).reshape(-1)):
            det_per_class[int(label) - 1].append((d["image_id"], float(score), box))
    results: dict[str, float] = {}
    excluded: list[str] = []
    aps = []
    for c, name in enumerate(VOC_CLASSES):
        ap = _class_ap(det_per_class[c], gt_per_class[c], use_07_metric=use07)
        if math.isnan(ap):
            excluded.append(name)
            continue
        results[f"{prefix}/AP/{name}"] = 100.0 * ap
        aps.append(ap)
    results = {f"{prefix}/mAP": 100.0 * float(np.mean(aps)) if aps else float("nan"), **results}
    return results, excluded


# ------------------------------------------------------------------------------------ the recipe's detector

DETECTORS = ("rpn", "selective_search")


def _detector(proposals: str) -> str:
    if proposals not in DETECTORS:
        raise ConfigError(f"recipe.proposals: expected one of {DETECTORS}, got {proposals!r}")
    return proposals


def detection_data(detector: str, root: str | Path, year: str | int, train_split: str, test_split: str,
                   min_size: int, max_size: int, train_scales: Sequence[int], train_max_size: int, batch_size: int,
                   rois_per_batch: int, fg_fraction: float, num_workers: int, use_difficult_in_training: bool,
                   proposals: str | Path | None, seed: int) -> pl.LightningDataModule:
    """The datamodule of ``recipe.proposals``: ``rpn`` -> ``VOCDetectionData`` (trains at the test scale
    ``min_size``/``max_size``); ``selective_search`` -> ``FastRCNNData`` on the ``proposals`` folder."""
    if _detector(detector) == "rpn":
        return VOCDetectionData(root, year, train_split, test_split, min_size, max_size, batch_size, num_workers,
                                use_difficult_in_training, seed)
    from ssl_bench.transfer.fast_rcnn_data import FastRCNNData
    return FastRCNNData(root, proposals, year, train_split, test_split, tuple(train_scales), train_max_size,
                        min_size, max_size, batch_size, rois_per_batch, fg_fraction, num_workers,
                        use_difficult_in_training, seed)


def detection_task(detector: str, trunk: nn.Module, optimizer: Callable[..., Any],
                   scheduler: Callable[..., Any] | None = None, fc6: nn.Linear | None = None,
                   fc7: nn.Linear | None = None, min_size: int = 600, max_size: int = 1000, rois_per_batch: int = 128,
                   batch_size: int = 2, dropout: float = 0.5, bias_lr_mult: float = 2.0, bias_decay_mult: float = 0.0,
                   test_nms: float = 0.3, score_thresh: float = 0.05, max_per_image: int = 100,
                   year: str | int = "2007") -> pl.LightningModule:
    """The LightningModule of ``recipe.proposals``: ``rpn`` -> ``VOCDetectionTask`` (its own NMS 0.5,
    biases at the weights' lr, ``rois_per_batch / batch_size`` RoIs per image); ``selective_search`` ->
    ``FastRCNNTask`` with the recipe's head and test settings."""
    if _detector(detector) == "rpn":
        return VOCDetectionTask(trunk, optimizer, scheduler, fc6, fc7, min_size, max_size,
                                box_batch_size_per_image=max(1, int(rois_per_batch) // int(batch_size)),
                                box_score_thresh=score_thresh, box_detections_per_img=max_per_image, year=year)
    from ssl_bench.transfer.fast_rcnn import FastRCNNTask
    return FastRCNNTask(trunk, optimizer, scheduler, fc6, fc7, dropout, bias_lr_mult, bias_decay_mult, test_nms,
                        score_thresh, max_per_image, year)
