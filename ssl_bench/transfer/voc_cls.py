"""PASCAL VOC2007 multi-label classification fine-tuning (Split-Brain / Colorization Table 4 "Cls").

Protocol
--------
* Data (:class:`VOCClassificationData`): the image-level label matrix of ``ssl_bench.data.voc``
  (1 present, 0 "difficult" only, -1 absent).  Training: resize the short side to ``load_size``,
  then a random scale + aspect crop (``RandomResizedCrop``: ``scale_range`` of the area, aspect ratio
  in [3/4, 4/3]) resized to ``crop_size``, then a random horizontal mirror.  Test: resize the short
  side to ``load_size`` and take torchvision's ``TenCrop(crop_size)`` (4 corners + centre, and their
  mirrors), stacked as a 10 x 3 x crop x crop uint8 tensor per image.
* Model (:class:`VOCClassificationTask`): the trunk up to fc7, the fc7 map averaged over space (this
  trunk's fc6/fc7 are convolutions, so on a 227 crop fc7 is a small map, not a vector), and a new
  linear fc8 with 20 outputs.  ``train_from="fc6"``: only fc6, fc7 and fc8 learn; conv1..conv5 (and a
  colour wrapper's ``conv1_ab``) are frozen -- no gradient, never in the optimiser, and kept in eval
  mode at every training step so any batch-norm running statistics never move either.
  ``train_from="conv1"``: every layer learns.
* Loss: sigmoid cross-entropy per (image, class), target 1 for label 1 and 0 for label -1; entries
  with label 0 (difficult) are ignored; the mean is over the non-ignored entries.
* Test: the logits of the 10 crops of an image are averaged (sigmoid-free logits, not
  probabilities; AP only uses the ranking, and the mean logit is the usual Caffe-style 10-crop
  score).  mAP is reported both as the VOC2007 devkit's 11-point AP (``.../mAP``, the number of the
  papers' tables) and as the area under the interpolated precision-recall curve
  (``.../mAP_area``), in percent, with ``ssl_bench.metrics.mean_average_precision``
  (difficult entries ignored, as in the devkit).

Under DDP the per-image scores and labels of all ranks are gathered before computing AP.  Note that a
``DistributedSampler`` pads the test set with repeated images so every rank gets the same number;
those duplicates are scored twice and slightly change AP.  Evaluate on one device (or with a test
set whose size divides evenly) for the exact number; the tests are single-process.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2 as T

from ssl_bench.data.images import SkipCounter
from ssl_bench.data.voc import VOC_CLASSES, VOCClassification, collate_voc, read_image_set, voc_root
from ssl_bench.errors import CheckpointError, ConfigError, DataError, MissingDataError
from ssl_bench.io import atomic_writer
from ssl_bench.metrics import mean_average_precision, voc_prefix
from ssl_bench.models.inputs import trunk_input
from ssl_bench.models.layers import LAYERS
from ssl_bench.models.optim import caffe_bias_optimizers
from ssl_bench.models.split_brain import HALVES
from ssl_bench.pretext import common
from ssl_bench.transfer.loaders import sharded_loader

__all__ = ["AUGMENTS", "METRICS", "TRAIN_FROM", "RandomScaleCrop", "VOCClassificationData",
           "VOCClassificationTask", "layer_parameters", "layer_modules", "masked_bce_loss", "sklearn_map",
           "ten_crop_transform", "voc_train_transform", "write_test_scores"]

TRAIN_FROM: tuple[str, ...] = ("fc6", "conv1")
# the recipe's names of the two published settings (Table 4 "fc6-8" and "all")
TRAIN_LAYERS = {"fc6-8": "fc6", "all": "conv1"}
AUGMENTS: tuple[str, ...] = ("resized_crop", "random_scale")
TEST_AUGMENTS: tuple[str, ...] = ("ten_crop", "random_scale")
METRICS: tuple[str, ...] = ("sklearn_ap", "voc07_11pt")
LOSS_NORMALIZATIONS: tuple[str, ...] = ("kept", "batch")
# what a crop reaching outside the scaled image is padded with: the mean pixel (zero after Caffe's
# mean subtraction)
PAD_PIXEL = (123, 117, 104)
TRUNK_LAYERS = LAYERS
FROZEN_FOR_FC6: tuple[str, ...] = TRUNK_LAYERS[:5]
# Extra modules of a colour wrapper and the trunk layer they belong with.
_ALIASES = {"conv1_ab": "conv1"}
# Modules holding the layers: a wrapper's network (``.trunk``) and the split-brain trunk's two halves.
_HOLDERS = ("trunk", *HALVES)


# ------------------------------------------------------------------------------------ data

def voc_train_transform(crop_size: int = 227, load_size: int | None = 256,
                        scale_range: tuple[float, float] = (0.5, 1.0)) -> T.Compose:
    """uint8 3 x H x W -> uint8 3 x crop x crop: resize the short side to ``load_size`` (None = keep),
    random crop of ``scale_range`` of the area (aspect 3/4..4/3) resized to ``crop_size``, mirror."""
    steps: list[Any] = [T.Resize(load_size, antialias=True)] if load_size else []
    steps += [T.RandomResizedCrop(crop_size, scale=tuple(scale_range), ratio=(3 / 4, 4 / 3), antialias=True),
              T.RandomHorizontalFlip()]
    return T.Compose(steps)


class RandomScaleCrop:
    """Krähenbühl's augmentation: the whole image scaled by s ~ U(lo, hi), a random ``crop`` x ``crop``
    window (the scaled image padded with the mean pixel where it is smaller), a random mirror.

    ``__call__(img, generator=None)``: uint8 3 x H x W -> uint8 3 x crop x crop; with a generator the
    draw is a function of it alone (the test crops of an image are then the same on every run and rank).
    """

    def __init__(self, crop_size: int = 227, scale_range: Sequence[float] = (0.5, 2.0), mirror: bool = True) -> None:
        lo, hi = (float(v) for v in scale_range)
        if not 0 < lo <= hi:
            raise ConfigError(f"recipe.scale_range: expected 0 < min <= max, got {list(scale_range)}")
        self.crop, self.lo, self.hi, self.mirror = int(crop_size), lo, hi, mirror

    def __call__(self, img: Tensor, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(4, generator=generator).tolist()
        s = self.lo + (self.hi - self.lo) * u[0]
        h, w = img.shape[-2:]
        img = T.functional.resize(img, [max(1, round(h * s)), max(1, round(w * s))], antialias=True)
        h, w = img.shape[-2:]
        ph, pw = max(0, self.crop - h), max(0, self.crop - w)
        if ph or pw:
            canvas = torch.tensor(PAD_PIXEL, dtype=img.dtype).view(3, 1, 1).expand(3, h + ph, w + pw).clone()
            canvas[:, ph // 2:ph // 2 + h, pw // 2:pw // 2 + w] = img
            img, h, w = canvas, h + ph, w + pw
        top, left = int(u[1] * (h - self.crop + 1)), int(u[2] * (w - self.crop + 1))
        img = img[:, top:top + self.crop, left:left + self.crop]
        return img.flip(-1) if self.mirror and u[3] < 0.5 else img


class RandomCrops:
    """``k`` crops of :class:`RandomScaleCrop`, stacked: uint8 3 x H x W -> uint8 k x 3 x crop x crop."""

    def __init__(self, k: int, crop: RandomScaleCrop) -> None:
        self.k, self.crop = int(k), crop

    def __call__(self, img: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.stack([self.crop(img, generator) for _ in range(self.k)])


class _IndexedTest(torch.utils.data.Dataset):
    """The test set with each sample's index, and its random test crops drawn from a generator seeded
    by (seed, index): ``(crops, (label, index))`` or ``(None, path)`` for an unreadable image."""

    def __init__(self, base: VOCClassification, transform: Callable[..., Tensor], seed: int) -> None:
        self.base, self.transform, self.seed = base, transform, int(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img, label = self.base[index]
        if img is None:
            return None, label
        if isinstance(self.transform, RandomCrops):
            img = self.transform(img, torch.Generator().manual_seed(self.seed * 1_000_003 + index))
        else:
            img = self.transform(img)
        return img, (label, index)


def collate_indexed(batch: list[tuple[Any, Any]]) -> dict[str, Any]:
    """``collate_voc`` of ``_IndexedTest`` samples, plus "index": int64 N dataset indices of the images."""
    out = collate_voc([(img, lab if img is None else lab[0]) for img, lab in batch])
    out["index"] = torch.tensor([lab[1] for img, lab in batch if img is not None], dtype=torch.long)
    return out


class _StackCrops(nn.Module):
    def forward(self, crops: Sequence[Tensor]) -> Tensor:
        return torch.stack(list(crops))


def ten_crop_transform(crop_size: int = 227, load_size: int | None = 256) -> T.Compose:
    """uint8 3 x H x W -> uint8 10 x 3 x crop x crop: resize the short side to ``load_size``, then
    torchvision's TenCrop (top-left, top-right, bottom-left, bottom-right, centre, then the same five of
    the mirrored image)."""
    steps: list[Any] = [T.Resize(load_size, antialias=True)] if load_size else []
    steps += [T.TenCrop(crop_size), _StackCrops()]
    return T.Compose(steps)


class VOCClassificationData(pl.LightningDataModule):
    """VOC image-level labels with the fine-tuning augmentation and the 10-crop test.

    Batches are ``collate_voc`` dicts: ``{"image": uint8 B x 3 x crop x crop (train) or
    B x 10 x 3 x crop x crop (test), "label": int8 B x 20 in {1, 0, -1}, "skipped": [paths]}``;
    unreadable images are left out of the batch and listed under "skipped" (counted by the task).

    Args:
        root: the folder holding ``VOCdevkit``, the ``VOCdevkit`` folder, or ``VOC<year>`` itself.
        year, train_split, test_split: which ``ImageSets/Main/<split>.txt`` to use.
        load_size: short side before cropping (train and test); crop_size: network input side.
        augment: "resized_crop" (short side ``load_size``, a crop of ``scale_range`` of the area) or
            "random_scale" (:class:`RandomScaleCrop`: the image scaled by ``scale_range``).
        test_augment: "ten_crop" (torchvision's TenCrop) or "random_scale" (``test_crops`` crops of
            the training augmentation, drawn from a generator seeded by (``seed``, image index)).
        batch_size / test_batch_size: images per global batch (split across DDP ranks, see
            ``ssl_bench.transfer.loaders``; a test image is ``test_crops`` crops).
        seed: the training order's and the test crops' seed.

    A missing VOC<year> tree or split file raises FileNotFoundError naming the path at construction;
    an image set naming a missing image or annotation raises it (naming the file) in ``setup``.
    """

    def __init__(self, root: str, year: str = "2007", train_split: str = "trainval", test_split: str = "test",
                 load_size: int | None = 256, crop_size: int = 227, scale_range: Sequence[float] = (0.5, 1.0),
                 batch_size: int = 32, test_batch_size: int = 8, num_workers: int = 2,
                 augment: str = "resized_crop", test_augment: str = "ten_crop", test_crops: int = 10,
                 seed: int = 0) -> None:
        super().__init__()
        if augment not in AUGMENTS or test_augment not in TEST_AUGMENTS:
            raise ConfigError(f"recipe.augment / recipe.test_augment: expected one of {AUGMENTS} / {TEST_AUGMENTS}, "
                              f"got {augment!r} / {test_augment!r}")
        if test_augment == "ten_crop" and int(test_crops) != 10:
            raise ConfigError(f"recipe.test_crops={test_crops}: the ten_crop test takes 10 crops")
        if load_size and crop_size > load_size:
            raise ConfigError(f"finetune.crop_size={crop_size} is larger than finetune.load_size={load_size}")
        lo, hi = (float(s) for s in scale_range)
        if augment == "resized_crop" and not 0 < lo <= hi <= 1:
            raise ConfigError(f"finetune.scale_range: expected 0 < min <= max <= 1, got {tuple(scale_range)}")
        self.year = str(year)
        self.root = voc_root(root, self.year)                 # FileNotFoundError naming the path
        if re.fullmatch(r"VOC\d{4}", self.root.name) and self.root.name != f"VOC{self.year}":
            # voc_root accepts any folder with the devkit layout when given it directly
            raise MissingDataError(f"{self.root}: is {self.root.name}, not VOC{self.year} "
                                   f"(finetune year={self.year!r}); pass the VOC{self.year} folder")
        self.train_split, self.test_split = train_split, test_split
        for split in (train_split, test_split):
            read_image_set(self.root, self.year, split)       # FileNotFoundError naming the split file
        self.load_size, self.crop_size, self.scale_range = load_size, crop_size, (lo, hi)
        self.batch_size, self.test_batch_size, self.num_workers = batch_size, test_batch_size, num_workers
        self.seed = int(seed)
        scale = RandomScaleCrop(crop_size, (lo, hi))
        resized = voc_train_transform(crop_size, load_size, (lo, hi))
        self.train_transform = resized if augment == "resized_crop" else scale
        self.test_transform = (ten_crop_transform(crop_size, load_size) if test_augment == "ten_crop"
                               else RandomCrops(test_crops, scale))
        self.train_set: VOCClassification | None = None
        self.test_set: _IndexedTest | None = None

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = VOCClassification(self.root, self.year, self.train_split, self.train_transform)
        if stage in (None, "test") and self.test_set is None:
            base = VOCClassification(self.root, self.year, self.test_split)
            self.test_set = _IndexedTest(base, self.test_transform, self.seed)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        return sharded_loader(self.train_set, self.batch_size, True, self.seed, collate_voc, self.num_workers)

    def test_dataloader(self) -> DataLoader:
        assert self.test_set is not None, "call setup() first"
        return sharded_loader(self.test_set, self.test_batch_size, False, self.seed, collate_indexed,
                              self.num_workers)

    def test_ids(self) -> list[str]:
        """The VOC image ids of the test set, in dataset-index order."""
        assert self.test_set is not None, "call setup() first"
        return [Path(p).stem for p in self.test_set.base.paths]


# ------------------------------------------------------------------------------------ trunk layers

def _layer_of(name: str) -> str | None:
    """The trunk layer a parameter / module path belongs to: leading holder components ("trunk", a
    split-brain half) are skipped, then the first component must be conv1..fc7 (or an alias such as conv1_ab)."""
    parts = name.split(".")
    i = 0
    while i < len(parts) and parts[i] in _HOLDERS:
        i += 1
    if i >= len(parts):
        return None
    head = parts[i]
    return head if head in TRUNK_LAYERS else _ALIASES.get(head)


def layer_parameters(trunk: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """{layer: [(name, parameter)]} for conv1..fc7, found by name prefix, directly on the trunk or on a
    wrapper's ``.trunk`` or a split-brain half (``conv1_ab`` of a colour wrapper goes with conv1).
    ValueError when the trunk has parameters outside these layers (their role in fine-tuning would be a guess)."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {k: [] for k in TRUNK_LAYERS}
    unknown = []
    for name, p in trunk.named_parameters():
        layer = _layer_of(name)
        if layer is None:
            unknown.append(name)
        else:
            groups[layer].append((name, p))
    if unknown:
        raise CheckpointError(f"finetune: trunk parameters outside conv1..fc7 (and conv1_ab): {unknown[:5]}; "
                              "cannot tell whether they are frozen with train_from=fc6")
    missing = [k for k, v in groups.items() if not v]
    if missing:
        raise CheckpointError(f"finetune: the trunk has no parameters for layer(s) {missing}; expected modules "
                              "named conv1..conv5, fc6, fc7 on the trunk or on trunk.trunk")
    return groups


def layer_modules(trunk: nn.Module, layers: Iterable[str]) -> list[nn.Module]:
    """The top-level modules of the given layers (and their aliases), by name prefix."""
    wanted = set(layers)
    out = []
    for name, m in trunk.named_modules():
        parts = name.split(".") if name else []
        # only the module that *is* the layer (its children follow it in eval()/train() anyway)
        if parts and _layer_of(name) in wanted and all(p in _HOLDERS for p in parts[:-1]):
            out.append(m)
    return out


# ------------------------------------------------------------------------------------ loss

def masked_bce_loss(logits: Tensor, labels: Tensor, normalization: str = "kept") -> Tensor:
    """Sigmoid cross-entropy over labels in {1, 0, -1}: targets 1 / 0 for labels 1 / -1, entries with
    label 0 (difficult) ignored. ``normalization``: "kept" = mean over the kept entries (0 when none is
    kept, still differentiable); "batch" = their sum over the batch size (Krähenbühl's
    SigmoidCrossEntropyLoss layer)."""
    keep = labels != 0
    targets = (labels > 0).to(logits.dtype)
    per = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    per = torch.where(keep, per, torch.zeros_like(per))
    if normalization == "batch":
        return per.sum() / max(1, logits.shape[0])
    return per.sum() / keep.sum().clamp_min(1)


def sklearn_map(scores: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """The authors' metric: per class scikit-learn's ``average_precision_score`` (not interpolated) over
    the images whose label is not 0 (difficult), with their tie rule (a positive's score lowered by
    1e-5, so ties count against it); classes without a positive get nan. scores float N x C, labels
    int N x C in {1, 0, -1} -> (mean over the defined classes, C APs in [0, 1])."""
    from sklearn.metrics import average_precision_score

    aps = np.full(labels.shape[1], np.nan)
    for c in range(labels.shape[1]):
        keep = labels[:, c] != 0
        y = (labels[keep, c] > 0).astype(np.int64)
        if y.any():
            aps[c] = average_precision_score(y, scores[keep, c] - 1e-5 * y)
    return float(np.nanmean(aps)), aps


def write_test_scores(path: Path, ids: Sequence[str], scores: np.ndarray, labels: np.ndarray,
                      scores_1crop: np.ndarray | None = None) -> Path:
    """Atomically write ``test_scores.npz``: ids (str N), scores (float N x 20, the headline test
    scores), labels (int8 N x 20: 1 present, 0 difficult only, -1 absent) and, when given,
    scores_1crop (the first test crop's scores)."""
    arrays = {"ids": np.asarray(list(ids)), "scores": scores, "labels": labels.astype(np.int8)}
    if scores_1crop is not None:
        arrays["scores_1crop"] = scores_1crop
    with atomic_writer(path) as f:
        np.savez(f, **arrays)
    return path


# ------------------------------------------------------------------------------------ task

class VOCClassificationTask(pl.LightningModule):
    """Fine-tune a trunk + new fc8 on VOC multi-label classification; 10-crop test mAP.

    Args:
        trunk: prepared trunk exposing ``forward_features(x, layers)``, ``input_space`` ("L", "rgb" or
            "lab") and ``out_channels``; modules conv1..conv5, fc6, fc7 on it or on ``trunk.trunk``.
        optimizer, scheduler: partial factories (``ssl_bench.pretext.common.configure_optimizers``);
            the optimiser receives the trainable parameters only.
        train_from: "fc6" / "fc6-8" (fc6, fc7, fc8 learn) or "conv1" / "all" (everything learns).
        num_classes: 20 for VOC.
        year: for the metric names ``voc<year>/cls_<fc6|all>/...``.
        bias_lr_mult, bias_decay_mult: Caffe's lr_mult / decay_mult of every trained bias.
        loss_normalization: "kept" or "batch" (see `masked_bce_loss`).
        fc8_std, fc8_bias: fc8's init, N(0, fc8_std) weights and a constant bias.
        metric: the headline ``.../mAP``: "sklearn_ap" (the authors' non-interpolated AP) or
            "voc07_11pt" (the devkit's 11-point AP); both are reported under their own names too.
        test_reduce: "mean" or "sum" of an image's crop scores.

    ``results`` (filled by fit and test): ``<prefix>/mAP`` (the ``metric``, %), ``<prefix>/mAP_sklearn``,
    ``<prefix>/mAP_voc07`` (11-point), ``<prefix>/mAP_area``, ``<prefix>/mAP_1crop`` (sklearn AP of the first
    test crop), ``<prefix>/AP/<class>`` (the ``metric``, %), ``<prefix>/train_images_per_s`` (wall clock over the
    training run, data loading included, all ranks), ``<prefix>/test_images_per_s``,
    ``<prefix>/skipped_images``.
    """

    def __init__(self, trunk: nn.Module, optimizer: Callable[..., Any], scheduler: Callable[..., Any] | None = None,
                 train_from: str = "fc6", num_classes: int = 20, year: str = "2007", bias_lr_mult: float = 1.0,
                 bias_decay_mult: float = 1.0, loss_normalization: str = "kept", fc8_std: float = 0.01,
                 fc8_bias: float = 0.0, metric: str = "voc07_11pt", test_reduce: str = "mean") -> None:
        super().__init__()
        train_from = TRAIN_LAYERS.get(str(train_from), str(train_from))
        if train_from not in TRAIN_FROM:
            raise ConfigError(f"recipe.train_layers (task.module.train_from): expected one of {list(TRAIN_LAYERS)}, "
                              f"got {train_from!r}")
        if metric not in METRICS or loss_normalization not in LOSS_NORMALIZATIONS or test_reduce not in ("mean", "sum"):
            raise ConfigError(f"recipe.metric / loss_normalization / test_reduce: expected one of {METRICS} / "
                              f"{LOSS_NORMALIZATIONS} / (mean, sum), got {metric!r} / {loss_normalization!r} / "
                              f"{test_reduce!r}")
        self.bias_lr_mult, self.bias_decay_mult = float(bias_lr_mult), float(bias_decay_mult)
        self.loss_normalization, self.metric, self.test_reduce = loss_normalization, metric, test_reduce
        self.test_ids: list[str] | None = None
        for attr in ("forward_features", "input_space", "out_channels"):
            if not hasattr(trunk, attr):
                raise TypeError(f"finetune: the trunk has no {attr!r}")
        self.trunk, self.train_from, self.num_classes, self.year = trunk, train_from, int(num_classes), str(year)
        self.input_space = trunk.input_space
        self.prefix = f"{voc_prefix(self.year)}/cls_{'fc6' if train_from == 'fc6' else 'all'}"
        self.class_names = (tuple(VOC_CLASSES) if self.num_classes == len(VOC_CLASSES)
                            else tuple(f"class{i}" for i in range(self.num_classes)))
        self.fc8 = nn.Linear(trunk.out_channels, self.num_classes)
        nn.init.normal_(self.fc8.weight, std=float(fc8_std))
        nn.init.constant_(self.fc8.bias, float(fc8_bias))
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler

        groups = layer_parameters(trunk)
        self.frozen_layers = FROZEN_FOR_FC6 if train_from == "fc6" else ()
        for layer, params in groups.items():
            for _, p in params:
                p.requires_grad_(layer not in self.frozen_layers)
        # Plain list, not registered as submodules (they already are, through self.trunk).
        self._frozen_modules = layer_modules(trunk, self.frozen_layers)
        self.skips = SkipCounter()
        self.results: dict[str, float] = {}
        self._scores: list[Tensor] = []
        self._first: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._index: list[Tensor] = []
        self._train_images = 0
        self._train_t0: float | None = None
        self._test_images = 0
        self._test_t0: float | None = None

    # ---- frozen layers stay frozen
    def train(self, mode: bool = True) -> "VOCClassificationTask":
        super().train(mode)
        self._freeze_modes()
        return self

    def _freeze_modes(self) -> None:
        for m in self._frozen_modules:
            m.eval()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ---- forward
    def forward(self, images: Tensor) -> Tensor:
        """uint8 N x 3 x H x W -> logits N x num_classes (fc8 on the spatial mean of the fc7 map)."""
        x = trunk_input(images, self.input_space)
        fc7 = self.trunk.forward_features(x, ("fc7",))["fc7"]
        return self.fc8(fc7.mean(dim=(2, 3)))

    def crop_logits(self, images: Tensor) -> Tensor:
        """uint8 B x K x 3 x H x W (K crops per image) -> logits B x K x num_classes; a B x 3 x H x W batch
        is one crop per image."""
        if images.dim() == 4:
            images = images[:, None]
        b, k = images.shape[:2]
        return self(images.flatten(0, 1)).view(b, k, -1)

    def crop_scores(self, images: Tensor) -> Tensor:
        """uint8 B x K x 3 x H x W -> the crops' logits reduced by ``test_reduce`` (mean or sum), B x num_classes."""
        logits = self.crop_logits(images)
        return logits.sum(dim=1) if self.test_reduce == "sum" else logits.mean(dim=1)

    # ---- training
    def on_train_start(self) -> None:
        self._train_images, self._train_t0 = 0, time.perf_counter()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._freeze_modes()  # belt and braces: whatever toggled the modes, frozen layers run in eval

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        images = common.batch_images(self, batch)
        if images is None:
            return None
        logits = self(images)
        loss = masked_bce_loss(logits.float(), batch["label"], self.loss_normalization)
        common.check_finite(loss, self.global_step, f"{self.prefix}/loss")
        self._train_images += images.shape[0]
        self.log(f"{self.prefix}/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def on_train_end(self) -> None:
        if self._train_t0 is not None and self._train_images:
            dt = time.perf_counter() - self._train_t0
            world = self.trainer.world_size if self._trainer is not None else 1
            self.results[f"{self.prefix}/train_images_per_s"] = self._train_images * world / dt
        self.results[f"{self.prefix}/skipped_images"] = float(self.skips.count)

    # ---- test
    def on_test_epoch_start(self) -> None:
        self._scores, self._first, self._labels, self._index = [], [], [], []
        self._test_images, self._test_t0 = 0, time.perf_counter()
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        self.test_ids = dm.test_ids() if hasattr(dm, "test_ids") else None

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = common.batch_images(self, batch)
        if images is None:
            return
        logits = self.crop_logits(images).float().detach()
        self._scores.append(logits.sum(dim=1) if self.test_reduce == "sum" else logits.mean(dim=1))
        self._first.append(logits[:, 0])
        self._labels.append(batch["label"].to(torch.int32))
        index = batch.get("index")
        self._index.append(index.to(self.device) if index is not None
                           else torch.arange(images.shape[0], device=self.device) + self._test_images)
        self._test_images += images.shape[0]

    def _gather_rows(self, x: Tensor) -> Tensor:
        """Concatenate x (n_rank x ...) over DDP ranks; ranks may hold different numbers of rows."""
        if self._trainer is None or self.trainer.world_size <= 1:
            return x
        n = torch.tensor([x.shape[0]], device=self.device)
        counts = self.all_gather(n).view(-1).tolist()
        pad = max(counts) - x.shape[0]
        if pad:
            x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
        g = self.all_gather(x)  # world x max_n x ...
        return torch.cat([g[r, :c] for r, c in enumerate(counts)])

    def _gathered(self, parts: list[Tensor], empty: Tensor) -> Tensor:
        """This rank's rows concatenated, then gathered over every rank."""
        return self._gather_rows(torch.cat(parts) if parts else empty)

    def on_test_epoch_end(self) -> None:
        dt = time.perf_counter() - (self._test_t0 or time.perf_counter())
        empty_s = torch.empty(0, self.num_classes, device=self.device)
        scores, first = self._gathered(self._scores, empty_s), self._gathered(self._first, empty_s)
        labels = self._gathered(self._labels, empty_s.to(torch.int32))
        index = self._gathered(self._index, torch.empty(0, dtype=torch.long, device=self.device))
        self._scores, self._first, self._labels, self._index = [], [], [], []
        if scores.shape[0] == 0:
            raise DataError("finetune: the test set has no readable images")
        order = torch.argsort(index.cpu())  # the one-process order, whatever the ranks' parts were
        s, lab = scores.cpu()[order].double().numpy(), labels.cpu()[order].numpy().astype(np.int8)
        self.test_scores, self.test_labels = s, lab
        self.test_scores_1crop = first.cpu()[order].double().numpy()
        self.test_index = index.cpu()[order].numpy()
        metrics = self._ap_metrics(s, lab)
        metrics[f"{self.prefix}/mAP_1crop"] = 100.0 * sklearn_map(self.test_scores_1crop, lab)[0]
        world = self.trainer.world_size if self._trainer is not None else 1
        metrics[f"{self.prefix}/test_images_per_s"] = self._test_images * world / max(dt, 1e-9)
        metrics[f"{self.prefix}/skipped_images"] = float(self.skips.count)
        for k, v in metrics.items():
            self.log(k, v)
        self.results.update(metrics)

    def _ap_metrics(self, scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """mAP both ways over the classes with a positive test image; a class without one gets nan
        (a warning names it) -- never the case on the real VOC2007 test set."""
        defined = np.flatnonzero((labels > 0).any(axis=0))
        if defined.size == 0:
            raise DataError("finetune: no class has a positive test image; AP is undefined")
        absent = [self.class_names[c] for c in range(labels.shape[1]) if c not in set(defined.tolist())]
        if absent:
            warnings.warn(f"finetune: no positive test image for class(es) {absent}: their AP is nan and "
                          "the mAP averages the other classes", stacklevel=2)
        names = [self.class_names[c] for c in defined]
        out: dict[str, float] = {}
        m07, ap07 = mean_average_precision(scores[:, defined], labels[:, defined], mode="voc07",
                                           ignore_zero=True, class_names=names)
        marea, _ = mean_average_precision(scores[:, defined], labels[:, defined], mode="area",
                                          ignore_zero=True, class_names=names)
        msk, apsk = sklearn_map(scores[:, defined], labels[:, defined])
        out[f"{self.prefix}/mAP_voc07"], out[f"{self.prefix}/mAP_sklearn"] = 100.0 * m07, 100.0 * msk
        out[f"{self.prefix}/mAP_area"] = 100.0 * marea
        out[f"{self.prefix}/mAP"] = 100.0 * (msk if self.metric == "sklearn_ap" else m07)
        per = dict(zip(defined.tolist(), (apsk if self.metric == "sklearn_ap" else ap07).tolist()))
        for c, name in enumerate(self.class_names):
            out[f"{self.prefix}/AP/{name}"] = 100.0 * per[c] if c in per else float("nan")
        return out

    # ---- optimiser
    def param_groups(self) -> list[dict[str, Any]]:
        """The trainable parameters as [weights, biases]; `configure_optimizers` scales the biases' lr and
        weight decay by ``bias_lr_mult`` / ``bias_decay_mult`` (Caffe's second ``param`` block)."""
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        biases = [p for n, p in named if n.endswith(".bias") and p.dim() == 1]
        ids = {id(p) for p in biases}
        return [{"params": [p for _, p in named if id(p) not in ids]}, {"params": biases}]

    def configure_optimizers(self) -> Any:
        groups = self.param_groups()
        frozen = {id(p) for m in self._frozen_modules for p in m.parameters()}
        assert not any(id(p) in frozen for g in groups for p in g["params"]), \
            "frozen parameters must not reach the optimiser"
        opt = self.optimizer_factory(groups)
        return caffe_bias_optimizers(opt, self.scheduler_factory, self.bias_lr_mult, self.bias_decay_mult)
