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

``run_colorization_eval`` does all of it in one pass over the evaluation split.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_bench import color
from ssl_bench.colorization.colorize import DECODE_METHODS, grey_rgb, load_colorizer, predict_ab, to_uint8
from ssl_bench.models.alexnet import AlexNet
from ssl_bench.models.checkpoint import CheckpointMismatchError, check_state_dict, read_checkpoint
from ssl_bench.models.inputs import trunk_input

__all__ = ["THRESHOLDS", "MAX_THRESHOLD", "auc_curve", "auc", "auc_from_curve", "AucAccumulator",
           "inverse_prior", "rebalanced_pixel_weights", "ab_error", "RandomReference",
           "load_classifier", "classifier_correct", "classifier_top1", "run_colorization_eval"]

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
            raise FileNotFoundError(f"classifier={spec}: VGG-16 weights file {path} does not exist")
        import torchvision
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or "classifier.6.weight" not in state:
            raise CheckpointMismatchError(f"classifier={spec}: {path} is not a torchvision VGG-16 state dict")
        num_classes = int(state["classifier.6.weight"].shape[0])
        net = torchvision.models.vgg16(weights=None, num_classes=num_classes)
        check_state_dict(net, state, str(path))
        net.load_state_dict(state)
        return ImageNetClassifier(net).eval(), {"kind": "vgg16", "source": str(path), "num_classes": num_classes}
    from ssl_bench.pretext.supervised import SupervisedPretext
    ckpt = read_checkpoint(spec)
    meta = ckpt.get("ssl_bench")
    if not isinstance(meta, dict) or "trunk" not in meta:
        raise CheckpointMismatchError(f"classifier={spec} was not written by ssl_bench (no 'ssl_bench' "
                                      "entry); give a pretext=supervised checkpoint or vgg16:/path")
    if meta.get("pretext") != "supervised" or not meta.get("num_classes"):
        what = f"{meta.get('pretext')}/{meta.get('variant')}" if meta.get("variant") else meta.get("pretext")
        raise CheckpointMismatchError(f"classifier={spec} is not a classifier: it holds a {what!r} model "
                                      "(give a pretext=supervised checkpoint or vgg16:/path)")
    model = SupervisedPretext(AlexNet(**meta["trunk"]), optimizer=None, num_classes=int(meta["num_classes"]),
                              input_space=meta.get("input_space", "rgb"))
    state = ckpt.get("state_dict") or {}
    check_state_dict(model, state, spec)
    model.load_state_dict(state)
    return model.eval(), {"kind": "supervised", "source": spec, "num_classes": int(meta["num_classes"]),
                          "input_space": meta.get("input_space", "rgb")}


@torch.no_grad()
def classifier_correct(classifier: nn.Module, images: Tensor, labels: Tensor) -> int:
    """Number of images whose top-1 class is the label: uint8 N x 3 x H x W, int64 N."""
    return int((classifier(images).argmax(1) == labels.to(images.device)).sum())


def classifier_top1(classifier: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in % of a classifier (uint8 N x 3 x H x W -> logits) on the images."""
    if images.shape[0] == 0:
        raise ValueError("classifier_top1: no images")
    return 100.0 * classifier_correct(classifier, images, labels) / images.shape[0]


# ---------------------------------------------------------------------------------------------
# The evaluation run


def _device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


REFERENCES = ("grey", "random", "gt")


def run_colorization_eval(cfg: Any) -> dict[str, Any]:
    """Colorization quality of ``cfg.checkpoint`` on the val split of ``cfg.data``; writes and returns
    the results.json record (kind "colorization_eval").

    One pass: per batch, the prediction is decoded once and scored (AuC raw and rebalanced) with the
    grey / random / ground-truth references on the same pixels, and the classifier (``cfg.classifier``,
    optional) is run on the colorized, grey and ground-truth images.
    """
    from hydra.utils import instantiate

    from ssl_bench.data.images import SkipCounter
    from ssl_bench.pretext.colorization import dataset_prior
    from ssl_bench.runs.common import RunClock, finish_record

    clock = RunClock()
    out_dir = Path(cfg.paths.output_dir)
    decode, T = str(cfg.decode), float(cfg.T)
    if decode not in DECODE_METHODS:
        raise ValueError(f"decode: expected one of {', '.join(DECODE_METHODS)}, got {decode!r}")
    if not T > 0:
        raise ValueError(f"T must be > 0, got {T}")
    torch.manual_seed(cfg.seed)
    device = _device(cfg.get("device"))
    model = load_colorizer(cfg.checkpoint, device)  # fail fast, before any data work
    meta = model.source_meta
    classifier, cdesc = (None, None)
    if cfg.get("classifier"):
        classifier, cdesc = load_classifier(cfg.classifier)
        classifier.to(device)

    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    samples = list(dm.val_samples)
    if not samples:
        raise ValueError(f"data.root={dm.root}: the val split is empty")
    if cfg.get("max_images") and len(samples) > cfg.max_images:
        samples = sorted(random.Random(cfg.seed).sample(samples, int(cfg.max_images)))
    if classifier is not None:
        if any(label < 0 for _, label in samples):
            raise ValueError(f"classifier=...: data.root={dm.root} has no labels (data.layout=folder); "
                             "the classifier test needs class folders (data.layout=imagefolder)")
        if cdesc["num_classes"] != dm.num_classes:
            raise ValueError(f"classifier={cfg.classifier} has {cdesc['num_classes']} classes but "
                             f"data.root={dm.root} has {dm.num_classes}")

    # the training set's prior (cached with the same name as pretraining's, so usually a hit)
    tp = time.perf_counter()
    prior_images = cfg.get("prior_images")
    batches: Any = dm.eval_train_dataloader()
    if prior_images:
        batches = (b for _, b in zip(range(max(1, prior_images // dm.batch_size)), batches))
    prior = dataset_prior(batches, f"{dm.fingerprint}-n{prior_images}", cfg.paths.cache_dir,
                          model.ab_stride, cfg.get("prior_sigma", 5.0))
    prior_s = time.perf_counter() - tp
    inv_prior = inverse_prior(prior).to(device)

    acc = {(row, kind): AucAccumulator() for row in ("model", *REFERENCES) for kind in ("raw", "rebal")}
    correct = {"colorized": 0, "grey": 0, "gt": 0}
    rand = RandomReference(cfg.seed)
    skips = SkipCounter()
    n_images = 0
    tl = time.perf_counter()
    with torch.inference_mode():
        for batch in dm.loader(samples, False, int(cfg.batch_size)):
            skips.add(batch["skipped"])
            images = batch["image"]
            if not images.shape[0]:
                continue
            images = images.to(device, non_blocking=True)
            lab = color.rgb_to_lab(images)
            L, ab = lab[:, :1], lab[:, 1:]
            ab_hat = F.interpolate(predict_ab(model, L, decode, T), size=L.shape[-2:], mode="bilinear",
                                   align_corners=False)
            w = inv_prior[color.nearest_bin(ab)]
            errors = {"model": ab_error(ab_hat, ab), "grey": torch.hypot(ab[:, 0], ab[:, 1]),
                      "gt": torch.zeros_like(ab[:, 0])}
            ab_rand = rand(ab)
            if ab_rand is not None:
                errors["random"] = ab_error(ab_rand, ab)
            for row, e in errors.items():
                idx = acc[row, "raw"].bin_index(e)  # the same bins serve both weightings
                acc[row, "raw"].update_bins(idx)
                acc[row, "rebal"].update_bins(idx, w)
            if classifier is not None:
                labels = batch["label"].to(device)
                colorized = to_uint8(color.lab_to_rgb(torch.cat([L, ab_hat], 1)))
                for name, imgs in (("colorized", colorized), ("grey", grey_rgb(L)), ("gt", images)):
                    correct[name] += classifier_correct(classifier, imgs, labels)
            n_images += images.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    loop_s = time.perf_counter() - tl
    if not n_images:
        raise ValueError(f"data.root={dm.root}: no decodable image in the val split "
                         f"({skips.count} unreadable)")

    metrics: dict[str, Any] = {"color/auc_raw": acc["model", "raw"].value(),
                               "color/auc_rebal": acc["model", "rebal"].value()}
    if classifier is not None:
        metrics["color/classifier_top1"] = 100.0 * correct["colorized"] / n_images
        metrics["color/classifier_top1_grey"] = 100.0 * correct["grey"] / n_images
        metrics["color/classifier_top1_gt"] = 100.0 * correct["gt"] / n_images
    for row in REFERENCES:
        for kind in ("raw", "rebal"):
            metrics[f"color/reference/{row}/auc_{kind}"] = acc[row, kind].value_or_none()
    metrics["color/images_per_s"] = n_images / loop_s if loop_s > 0 else None

    method = f"colorization/{meta['variant']}" if meta.get("variant") else "colorization"
    decoding = f"annealed mean T={T:g}" if decode == "annealed_mean" else decode
    if model.objective.kind == "regression":
        decoding = "direct ab regression (no decoding)"
    classifier_text = (f"; classifier top-1: {cdesc['kind']} ({cdesc['num_classes']} classes)"
                       if cdesc else "; no classifier")
    record = {
        "kind": "colorization_eval", "task": "auc_classifier", "method": method, "status": "completed",
        "protocol": f"{PROTOCOL} ({dm.crop_size} px); decoding: {decoding}{classifier_text}",
        "metrics": metrics,
        "checkpoint": str(cfg.checkpoint), "trunk": meta,
        "decode": decode, "T": T, "classifier": cdesc,
        "prior": {"sigma": cfg.get("prior_sigma", 5.0), "ab_stride": model.ab_stride,
                  "images": prior_images, "nonzero_bins": int((prior > 0).sum())},
        "dataset": {"name": Path(str(dm.root)).name, "root": str(dm.root), "fingerprint": dm.fingerprint,
                    "num_train": len(dm.train_samples), "num_val": len(dm.val_samples),
                    "num_eval": n_images, "num_classes": dm.num_classes, "crop_size": dm.crop_size,
                    "skipped_images": skips.count},
        "timing": {"prior_s": prior_s, "eval_loop_s": loop_s},
    }
    return finish_record(record, clock, cfg, out_dir)
