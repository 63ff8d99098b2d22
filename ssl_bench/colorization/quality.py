"""Colorization quality (Zhang et al. 2016, Table 1): AuC raw / rebalanced, semantic interpretability.

* AuC raw: per pixel, the L2 distance in ab between prediction and ground truth; the fraction of
  pixels within a threshold t, for t = 0, 1, ..., 150; the area under that curve (trapezoid rule over
  [0, 150]) normalised so that a perfect prediction scores 100 %.
* AuC rebalanced: the same with each pixel weighted by 1 / prior of its ground-truth ab bin (the
  training set's smoothed 313-bin prior; bins with prior 0 weigh 0).
* Semantic interpretability: top-1 of a fixed classifier on the colorized images, next to its top-1
  on the grey (L only) and on the ground-truth images.
* Reference rows on the same pixels: grey (ab = 0), random (ab of another image of the set) and
  ground truth (100 by construction).

``QualityAccumulator`` gathers all of it in one pass over the evaluation split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_bench import color
from ssl_bench.colorization.colorize import grey_rgb, predict_ab, to_uint8
from ssl_bench.errors import DataError, MissingDataError
from ssl_bench.models.checkpoint import (
    CheckpointMismatchError,
    load_state,
    read_state_dict,
    read_suite_checkpoint,
)
from ssl_bench.models.inputs import trunk_input
from ssl_bench.pretext.colorization import ColorizationPretext

__all__ = ["THRESHOLDS", "MAX_THRESHOLD", "auc_curve", "auc", "auc_from_curve", "AucAccumulator",
           "inverse_prior", "rebalanced_pixel_weights", "ab_error", "RandomReference",
           "load_classifier", "classifier_correct", "classifier_top1", "REFERENCES", "QualityAccumulator"]

MAX_THRESHOLD = 150
THRESHOLDS: tuple[int, ...] = tuple(range(MAX_THRESHOLD + 1))  # 0, 1, ..., 150 (ab units)
PROTOCOL = ("AuC of per-pixel ab L2 error over thresholds 0..150 (raw, and rebalanced by 1/prior of "
            "the ground-truth ab bin); full-resolution centre crops of the val split")


# ---------------------------------------------------------------------------------------------
# AuC


def _flat(errors: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor | None]:
    e = errors.reshape(-1).to(torch.float64).nan_to_num(nan=float("inf"))  # NaN never counts as close
    if weights is None:
        return e, None
    if weights.shape != errors.shape:
        raise ValueError(f"weights must have the shape of errors, got {tuple(weights.shape)} "
                         f"and {tuple(errors.shape)}")
    return e, weights.reshape(-1).to(torch.float64)


def auc_from_curve(curve: Tensor) -> float:
    """Area under a curve sampled at THRESHOLDS (151 fractions in [0, 1]), trapezoid rule over
    [0, 150], in % of the perfect area (150)."""
    c = curve.to(torch.float64)
    area = c.sum() - 0.5 * (c[0] + c[-1])  # unit steps
    return float(100.0 * area / MAX_THRESHOLD)


def auc_curve(errors: Tensor, weights: Tensor | None = None) -> Tensor:
    """Fraction of pixels (weighted) whose error is <= t, for every t in THRESHOLDS.

    errors: ab L2 errors, any shape (e.g. N x H x W), >= 0; NaN counts as beyond every threshold.
    weights: per-pixel weights of the same shape (>= 0), or None for equal weights.
    Returns float64 tensor of 151 values in [0, 1] (on errors' device). Exact: sorts the errors.
    """
    e, w = _flat(errors, weights)
    if w is None:
        w = torch.ones_like(e)
    total = w.sum()
    if not total > 0:
        raise ValueError("auc_curve: no pixels (or zero total weight)")
    e, order = torch.sort(e)
    cum = torch.cat([torch.zeros(1, dtype=torch.float64, device=e.device), w[order].cumsum(0)])
    t = torch.tensor(THRESHOLDS, dtype=torch.float64, device=e.device)
    return cum[torch.searchsorted(e, t, right=True)] / total


def auc(errors: Tensor, weights: Tensor | None = None) -> float:
    """AuC in % (100 = every pixel exact, 0 = every error above 150): see auc_curve for shapes."""
    return auc_from_curve(auc_curve(errors, weights))


class AucAccumulator:
    """Streaming AuC: a weighted histogram of errors, so one pass over the data suffices.

    Bin 0 holds errors == 0, bin k holds errors in ((k-1)/r, k/r] (r = bins_per_unit, 10: 0.1 ab
    units), the last bin everything above max_threshold (and NaN/inf). Since each integer threshold
    is a bin edge, the curve at THRESHOLDS is exactly that of ``auc_curve`` on the concatenated
    data (up to float64 summation order). The histogram lives on the device of the first update.
    """

    def __init__(self, max_threshold: int = MAX_THRESHOLD, bins_per_unit: int = 10) -> None:
        self.max_threshold, self.bins_per_unit = int(max_threshold), int(bins_per_unit)
        self.num_bins = self.max_threshold * self.bins_per_unit + 2
        self.hist: Tensor | None = None
        self.count = 0  # pixels seen

    def bin_index(self, errors: Tensor) -> Tensor:
        """Histogram bin of every error (flattened int64): compute once, feed several accumulators
        (raw and rebalanced) through ``update_bins``."""
        e = errors.reshape(-1)
        if not e.is_floating_point():
            e = e.to(torch.float64)
        # float32 is exact here too: t * r is representable, and an error even one ulp above an
        # integer threshold t still lands above t * r after the (correctly rounded) multiplication
        e = e.nan_to_num(nan=float("inf"))  # NaN never counts as close
        return torch.ceil(e * self.bins_per_unit).clamp_(0, self.num_bins - 1).to(torch.int64)

    def update_bins(self, idx: Tensor, weights: Tensor | None = None) -> None:
        """idx: from ``bin_index``; weights: same number of elements (any shape) or None."""
        w = None if weights is None else weights.reshape(-1).to(torch.float64)
        if w is not None and w.numel() != idx.numel():
            raise ValueError(f"weights must have one value per error, got {w.numel()} for {idx.numel()}")
        h = torch.bincount(idx, weights=w, minlength=self.num_bins).to(torch.float64)
        self.hist = h if self.hist is None else self.hist.add_(h.to(self.hist.device))
        self.count += idx.numel()

    def update(self, errors: Tensor, weights: Tensor | None = None) -> None:
        """errors: any shape, weights: same shape or None (see auc_curve)."""
        if weights is not None and weights.shape != errors.shape:
            raise ValueError(f"weights must have the shape of errors, got {tuple(weights.shape)} "
                             f"and {tuple(errors.shape)}")
        self.update_bins(self.bin_index(errors), weights)

    @property
    def total_weight(self) -> float:
        return 0.0 if self.hist is None else float(self.hist.sum())

    def curve(self) -> Tensor:
        """151 fractions (float64, CPU): weighted fraction of pixels with error <= t."""
        if self.hist is None or not self.total_weight > 0:
            raise ValueError("AucAccumulator: no pixels (or zero total weight) yet")
        cum = self.hist.cpu().cumsum(0)
        return cum[torch.arange(len(THRESHOLDS)) * self.bins_per_unit] / cum[-1]

    def value(self) -> float:
        """AuC in %."""
        return auc_from_curve(self.curve())

    def value_or_none(self) -> float | None:
        return self.value() if self.total_weight > 0 else None


# ---------------------------------------------------------------------------------------------
# Rebalancing and reference rows


def inverse_prior(prior: Tensor) -> Tensor:
    """313 class weights 1 / prior (float64); bins with prior 0 get weight 0."""
    if prior.shape != (color.NUM_BINS,):
        raise ValueError(f"prior must have shape ({color.NUM_BINS},), got {tuple(prior.shape)}")
    p = prior.to(torch.float64)
    return torch.where(p > 0, 1.0 / p.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(p))


def rebalanced_pixel_weights(ab: Tensor, prior: Tensor) -> Tensor:
    """Per-pixel weight 1 / prior[nearest bin of the ground-truth ab].

    ab: float N x 2 x H x W ground truth; prior: 313 (e.g. ``dataset_prior`` of the train split).
    Returns float64 N x H x W on ab's device (0 where the bin's prior is 0).
    """
    return inverse_prior(prior).to(ab.device)[color.nearest_bin(ab)]


def ab_error(ab_hat: Tensor, ab: Tensor) -> Tensor:
    """Per-pixel L2 distance in ab: N x 2 x H x W twice -> N x H x W."""
    d = ab_hat - ab
    return torch.hypot(d[:, 0], d[:, 1])


class RandomReference:
    """The "random" row: every image gets the ab of another image of the set (resized to its size).

    Streaming: the donor is drawn uniformly from the current batch and the previous one, never the
    image itself (seeded, so reproducible). ``__call__`` returns None for a first batch of one image
    (no other image yet).
    """

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(int(seed))
        self.previous: Tensor | None = None

    def __call__(self, ab: Tensor) -> Tensor | None:
        """ab: N x 2 x H x W ground truth of the batch -> N x 2 x H x W donors' ab, or None."""
        prev = self.previous
        if prev is not None and prev.shape[-2:] != ab.shape[-2:]:
            prev = F.interpolate(prev, size=ab.shape[-2:], mode="bilinear", align_corners=False)
        pool = ab if prev is None else torch.cat([prev, ab])
        self.previous = ab
        n, m = ab.shape[0], pool.shape[0]
        if m < 2:
            return None
        own = torch.arange(n) + (m - n)
        pick = torch.randint(0, m - 1, (n,), generator=self.generator)
        pick += (pick >= own).long()  # skip the image itself
        return pool[pick.to(ab.device)]


# ---------------------------------------------------------------------------------------------
# Semantic interpretability


class ImageNetClassifier(nn.Module):
    """A torchvision classifier fed uint8 images (sRGB / 255, ImageNet mean and std)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        """uint8 N x 3 x H x W -> logits N x C."""
        return self.net(trunk_input(images, "rgb"))


def load_classifier(spec: str) -> tuple[nn.Module, dict[str, Any]]:
    """The fixed classifier of the semantic-interpretability test, in eval mode, and a description.

    spec: a suite checkpoint of ``pretext=supervised`` (trunk + fc8 trained on the data's colour
    images), or ``vgg16:/path/to/vgg16.pth`` (torchvision VGG-16 state dict from a local file, the
    paper's classifier; nothing is downloaded). The returned module maps uint8 N x 3 x H x W
    images to logits N x C.
    """
    spec = str(spec)
    if spec.startswith("vgg16:"):
        path = Path(spec[len("vgg16:"):]).expanduser()
        if not path.is_file():
            raise MissingDataError(f"classifier={spec}: VGG-16 weights file {path} does not exist")
        import torchvision
        state = read_state_dict(path)
        if "classifier.6.weight" not in state:
            raise CheckpointMismatchError(f"classifier={spec}: {path} is not a torchvision VGG-16 state dict")
        num_classes = int(state["classifier.6.weight"].shape[0])
        net = load_state(torchvision.models.vgg16(weights=None, num_classes=num_classes), state, str(path))
        return ImageNetClassifier(net).eval(), {"kind": "vgg16", "source": str(path), "num_classes": num_classes}
    from ssl_bench.pretext.supervised import SupervisedPretext
    hint = "classifier= takes a pretext=supervised checkpoint or vgg16:/path"
    ckpt = read_suite_checkpoint(spec, pretext="supervised", expected="a classifier", hint=hint)
    num_classes = ckpt.meta.get("num_classes")
    if not num_classes:
        raise CheckpointMismatchError(f"checkpoint {spec} is not a classifier: it records no num_classes; {hint}")
    input_space = ckpt.meta.get("input_space", "rgb")
    model = ckpt.load_model(SupervisedPretext(ckpt.build_trunk(), optimizer=None, num_classes=int(num_classes),
                                              input_space=input_space))
    return model, {"kind": "supervised", "source": spec, "num_classes": int(num_classes),
                   "input_space": input_space}


@torch.no_grad()
def classifier_correct(classifier: nn.Module, images: Tensor, labels: Tensor) -> int:
    """Number of images whose top-1 class is the label: uint8 N x 3 x H x W, int64 N."""
    return int((classifier(images).argmax(1) == labels.to(images.device)).sum())


def classifier_top1(classifier: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in % of a classifier (uint8 N x 3 x H x W -> logits) on the images."""
    if images.shape[0] == 0:
        raise DataError("classifier_top1: no images")
    return 100.0 * classifier_correct(classifier, images, labels) / images.shape[0]


# ---------------------------------------------------------------------------------------------
# One evaluation pass


REFERENCES = ("grey", "random", "gt")
_WEIGHTINGS = ("raw", "rebal")


class QualityAccumulator:
    """The running scores of one pass of a colorizer over an evaluation split.

    Per batch the prediction is decoded once and scored (AuC raw and rebalanced) together with the
    grey / random / ground-truth references on the same pixels; with a classifier, its top-1 hits on
    the colorized, grey and ground-truth images are counted.

    prior: the training set's 313-bin ab prior (rebalanced AuC weighs a pixel by 1 / prior).
    seed: of the random reference's donor images.
    """

    def __init__(self, model: ColorizationPretext, prior: Tensor, decode: str = "annealed_mean", T: float = 0.38,
                 seed: int = 0, classifier: nn.Module | None = None) -> None:
        self.model, self.decode, self.T, self.classifier = model, decode, T, classifier
        self.inv_prior = inverse_prior(prior).to(next(model.parameters()).device)
        self.auc = {(row, kind): AucAccumulator() for row in ("model", *REFERENCES) for kind in _WEIGHTINGS}
        self.correct = {"colorized": 0, "grey": 0, "gt": 0}
        self.random = RandomReference(seed)
        self.images = 0

    @torch.inference_mode()
    def update(self, images: Tensor, labels: Tensor | None = None) -> None:
        """images: uint8 N x 3 x H x W on the model's device; labels: int64 N (needed with a classifier)."""
        lab = color.rgb_to_lab(images)
        L, ab = lab[:, :1], lab[:, 1:]
        ab_hat = F.interpolate(predict_ab(self.model, L, self.decode, self.T), size=L.shape[-2:],
                               mode="bilinear", align_corners=False)
        self._score_ab(ab, ab_hat)
        if self.classifier is not None:
            colorized = to_uint8(color.lab_to_rgb(torch.cat([L, ab_hat], 1)))
            for name, imgs in (("colorized", colorized), ("grey", grey_rgb(L)), ("gt", images)):
                self.correct[name] += classifier_correct(self.classifier, imgs, labels)
        self.images += images.shape[0]

    def _score_ab(self, ab: Tensor, ab_hat: Tensor) -> None:
        w = self.inv_prior[color.nearest_bin(ab)]
        errors = {"model": ab_error(ab_hat, ab), "grey": torch.hypot(ab[:, 0], ab[:, 1]),
                  "gt": torch.zeros_like(ab[:, 0])}
        ab_rand = self.random(ab)
        if ab_rand is not None:
            errors["random"] = ab_error(ab_rand, ab)
        for row, e in errors.items():
            idx = self.auc[row, "raw"].bin_index(e)  # the same bins serve both weightings
            self.auc[row, "raw"].update_bins(idx)
            self.auc[row, "rebal"].update_bins(idx, w)

    def metrics(self) -> dict[str, float | None]:
        """``color/auc_raw`` / ``color/auc_rebal``, the classifier's top-1 (%) on the three kinds of
        image when there is one, and ``color/reference/<row>/auc_<kind>`` (None: no pixel scored)."""
        if not self.images:
            raise DataError("QualityAccumulator: no images scored")
        metrics: dict[str, float | None] = {"color/auc_raw": self.auc["model", "raw"].value(),
                                            "color/auc_rebal": self.auc["model", "rebal"].value()}
        if self.classifier is not None:
            metrics["color/classifier_top1"] = 100.0 * self.correct["colorized"] / self.images
            metrics["color/classifier_top1_grey"] = 100.0 * self.correct["grey"] / self.images
            metrics["color/classifier_top1_gt"] = 100.0 * self.correct["gt"] / self.images
        for row in REFERENCES:
            for kind in _WEIGHTINGS:
                metrics[f"color/reference/{row}/auc_{kind}"] = self.auc[row, kind].value_or_none()
        return metrics
