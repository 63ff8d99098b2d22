"""VOC detection data for Fast R-CNN: images with their precomputed proposals, as the release's
``roi_data_layer`` prepares them (``rbgirshick/fast-rcnn``: ``lib/roi_data_layer/minibatch.py``,
``roidb.py``, ``lib/fast_rcnn/test.py``).

Training item: the image mirrored with probability 1/2 (the release adds a mirrored copy of every
image to the roidb; drawing the mirror per visit samples the same doubled set), scaled so its short
side is one of ``train_scales`` drawn uniformly (long side at most ``train_max_size``), and
``rois_per_image`` RoIs sampled from its proposals plus its ground-truth boxes
(``fast_rcnn.sample_rois``), their regression targets normalised by the training set's per-class
means and stds (``bbox_target_stats``, computed over the mirrored copies too, as the release does).
Test item: the image at ``test_scale`` (``test_max_size``) with all its proposals, and the proposals in
original pixels for decoding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ssl_bench.data.voc import read_annotations
from ssl_bench.errors import ConfigError
from ssl_bench.transfer.fast_rcnn import assign_rois, normalise_targets, sample_rois
from ssl_bench.transfer.loaders import sharded_loader
from ssl_bench.transfer.proposals import proposal_path, read_proposals, synthetic_proposals, write_proposals
from ssl_bench.transfer.voc_det import NUM_CLASSES, VOCDetectionData, VOCDetectionDataset

__all__ = ["scale_factor", "flip_boxes", "bbox_target_stats", "FastRCNNDataset", "FastRCNNData",
           "collate_fast_rcnn", "MISSING_PROPOSALS", "write_synthetic_proposals"]

MISSING_PROPOSALS = ("task.proposals: Fast R-CNN (recipe.proposals=selective_search) needs the folder holding "
                     "the Fast R-CNN release's selective-search files voc_<year>_<split>.mat; give task.proposals=DIR")


def scale_factor(height: int, width: int, target: int, max_size: int) -> float:
    """The release's image scale: short side to ``target`` unless the long side would then exceed
    ``max_size`` (rounded), in which case the long side goes to ``max_size``."""
    scale = float(target) / min(height, width)
    if round(scale * max(height, width)) > max_size:
        scale = float(max_size) / max(height, width)
    return scale


def resize_image(image: Tensor, scale: float) -> Tensor:
    """uint8 C x H x W scaled by ``scale`` (bilinear, no antialiasing, as cv2.INTER_LINEAR)."""
    h, w = image.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return image
    out = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


def flip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Mirror inclusive N x 4 boxes in an image of ``width`` pixels: x -> width - 1 - x."""
    return torch.stack([width - 1 - boxes[:, 2], boxes[:, 1], width - 1 - boxes[:, 0], boxes[:, 3]], 1)


def _train_gt(target: dict[str, Any]) -> tuple[Tensor, Tensor]:
    keep = target["train_keep"]
    return target["boxes"][keep], target["labels"][keep]


def bbox_target_stats(dataset: VOCDetectionDataset, proposals: dict[str, np.ndarray],
                      fg_thresh: float = 0.5) -> tuple[Tensor, Tensor]:
    """Per-class means and stds (NUM_CLASSES x 4; background row 0, 1) of the regression targets of
    every candidate RoI with IoU >= fg_thresh over the training images and their mirrors
    (``roidb.add_bbox_regression_targets``). Mirroring negates dx, so the mirrored copies are added
    analytically. A std of 0 (a class whose only candidates are exact ground truth) is set to 1."""
    count = torch.zeros(NUM_CLASSES, 1, dtype=torch.float64) + 1e-14
    sums = torch.zeros(NUM_CLASSES, 4, dtype=torch.float64)
    squares = torch.zeros(NUM_CLASSES, 4, dtype=torch.float64)
    for image_id, _, target in dataset.items:
        gt, labels = _train_gt(target)
        _, overlap, cls, deltas = assign_rois(torch.from_numpy(proposals[image_id]), gt, labels)
        fg = overlap >= fg_thresh
        cls, deltas = cls[fg], deltas[fg].double()
        mirrored = deltas * torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
        count.index_add_(0, cls, torch.full((len(cls), 1), 2.0, dtype=torch.float64))
        sums.index_add_(0, cls, deltas + mirrored)
        squares.index_add_(0, cls, deltas ** 2 + mirrored ** 2)
    means = sums / count
    stds = (squares / count - means ** 2).clamp(min=0).sqrt()
    stds[stds == 0] = 1.0
    means[0], stds[0] = 0.0, 1.0
    return means.float(), stds.float()


class FastRCNNDataset(Dataset):
    """Fast R-CNN items over a ``VOCDetectionDataset`` (see the module docstring).

    Training: (uint8 image, {"rois" R x 4 scaled, "labels" R, "bbox_targets" R x 4 normalised, "image_id"}).
    Test: (uint8 image, {"rois" P x 4 scaled, "proposals" P x 4 original, "size" (H, W), and the
    ground truth "boxes", "labels", "difficult", "image_id"}). An undecodable image: (None, path).
    """

    def __init__(self, base: VOCDetectionDataset, proposals: dict[str, np.ndarray], train: bool,
                 scales: tuple[int, ...], max_size: int, rois_per_image: int = 64, fg_fraction: float = 0.25,
                 stats: tuple[Tensor, Tensor] | None = None) -> None:
        self.base, self.proposals, self.train = base, proposals, bool(train)
        self.scales, self.max_size = tuple(int(s) for s in scales), int(max_size)
        self.rois_per_image, self.fg_fraction = int(rois_per_image), float(fg_fraction)
        self.stats = stats if stats is not None else (torch.zeros(NUM_CLASSES, 4), torch.ones(NUM_CLASSES, 4))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Tensor | None, Any]:
        image, target = self.base[index]
        if image is None:
            return None, target
        props = torch.from_numpy(self.proposals[target["image_id"]]).float()
        return self._train_item(image, target, props) if self.train else self._test_item(image, target, props)

    def _train_item(self, image: Tensor, target: dict[str, Any], props: Tensor) -> tuple[Tensor, dict[str, Any]]:
        h, w = image.shape[-2:]
        gt, labels = _train_gt(target)
        if torch.rand(()) < 0.5:
            image, gt, props = image.flip(-1), flip_boxes(gt, w), flip_boxes(props, w)
        scale = scale_factor(h, w, self.scales[int(torch.randint(len(self.scales), ()))], self.max_size)
        rois, roi_labels, targets = sample_rois(props, gt, labels, self.rois_per_image, self.fg_fraction)
        return resize_image(image, scale), {"rois": rois * scale, "labels": roi_labels,
                                            "bbox_targets": normalise_targets(roi_labels, targets, self.stats),
                                            "image_id": target["image_id"]}

    def _test_item(self, image: Tensor, target: dict[str, Any], props: Tensor) -> tuple[Tensor, dict[str, Any]]:
        h, w = image.shape[-2:]
        scale = scale_factor(h, w, self.scales[0], self.max_size)
        return resize_image(image, scale), {**target, "rois": props * scale, "proposals": props, "size": (h, w)}


def collate_fast_rcnn(batch: list[tuple[Any, Any]]) -> dict[str, Any]:
    """{"images": [uint8 C x H_i x W_i], "rois": [R_i x 4], "targets": [per-image dict], "skipped": [paths]};
    training batches also "labels" (sum R_i) and "bbox_targets" (sum R_i x 4, normalised)."""
    good = [(img, t) for img, t in batch if img is not None]
    out: dict[str, Any] = {"images": [g[0] for g in good], "rois": [g[1]["rois"] for g in good],
                           "targets": [g[1] for g in good], "skipped": [t for img, t in batch if img is None]}
    if good and "bbox_targets" in good[0][1]:
        out["labels"] = torch.cat([g[1]["labels"] for g in good])
        out["bbox_targets"] = torch.cat([g[1]["bbox_targets"] for g in good])
    return out


class FastRCNNData(VOCDetectionData):
    """VOC detection with selective-search proposals (``task.proposals``: the folder of
    ``voc_<year>_<split>.mat``). ``batch_size`` images per step share ``rois_per_batch`` RoIs."""

    def __init__(self, root: str | Path, proposals: str | Path | None, year: str | int = "2007",
                 train_split: str = "trainval", test_split: str = "test",
                 train_scales: tuple[int, ...] = (480, 576, 688, 864, 1200), train_max_size: int = 2000,
                 test_scale: int = 600, test_max_size: int = 1000, batch_size: int = 2, rois_per_batch: int = 128,
                 fg_fraction: float = 0.25, num_workers: int = 2, use_difficult_in_training: bool = True,
                 seed: int = 0) -> None:
        if proposals is None or str(proposals) == "":
            raise ConfigError(MISSING_PROPOSALS)
        if int(rois_per_batch) % int(batch_size):
            raise ConfigError(f"recipe.rois_per_batch: {rois_per_batch} is not a multiple of the batch size "
                              f"{batch_size} (the release splits it equally over the images)")
        super().__init__(root, year, train_split, test_split, test_scale, test_max_size, batch_size, num_workers,
                         use_difficult_in_training, seed)
        self.proposal_dir = Path(proposals)
        self.train_scales, self.train_max_size = tuple(train_scales), int(train_max_size)
        self.rois_per_image, self.fg_fraction = int(rois_per_batch) // int(batch_size), float(fg_fraction)
        self.bbox_stats: tuple[Tensor, Tensor] | None = None

    def _proposals(self, base: VOCDetectionDataset) -> dict[str, np.ndarray]:
        path = proposal_path(self.proposal_dir, self.year, base.split)
        return read_proposals(path, [item[0] for item in base.items])

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            base = VOCDetectionDataset(self.root, self.year, self.train_split, self.use_difficult_in_training)
            props = self._proposals(base)
            self.bbox_stats = bbox_target_stats(base, props)
            self.train_set = FastRCNNDataset(base, props, True, self.train_scales, self.train_max_size,
                                             self.rois_per_image, self.fg_fraction, self.bbox_stats)
        if stage in (None, "test") and self.test_set is None:
            base = VOCDetectionDataset(self.root, self.year, self.test_split)
            self.test_set = FastRCNNDataset(base, self._proposals(base), False, (self.min_size,), self.max_size)

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        return sharded_loader(ds, self.batch_size, shuffle, self.seed, collate_fast_rcnn, self.num_workers)


def write_synthetic_proposals(voc: Path, year: str | int, splits: tuple[str, ...], seed: int = 0) -> Path:
    """``<voc>/selective_search_data_synthetic/voc_<year>_<split>.mat`` for the synthetic VOC tree
    (``proposals.synthetic_proposals`` around its ground truth); written once, then reused."""
    folder = Path(voc) / "selective_search_data_synthetic"
    for split in splits:
        path = proposal_path(folder, year, split)
        if not path.is_file():
            gt = {i: (ann.boxes - 1.0, ann.height, ann.width) for i, _, ann in read_annotations(voc, year, split)}
            write_proposals(path, synthetic_proposals(gt, seed))
    return folder


def resolve_proposals(proposals: str | Path | None, voc: Path, synthetic: bool, year: str | int,
                      splits: tuple[str, ...]) -> tuple[str, bool]:
    """(the proposals folder a Fast R-CNN run reads, whether it holds synthetic stand-ins): the given
    ``task.proposals``; on the synthetic VOC tree without one, stand-ins written for it; otherwise a
    ConfigError naming ``task.proposals``."""
    if proposals not in (None, ""):
        return str(proposals), False
    if synthetic:
        return str(write_synthetic_proposals(voc, year, splits)), True
    raise ConfigError(MISSING_PROPOSALS)
