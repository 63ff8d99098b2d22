"""Fast R-CNN (Girshick, ICCV 2015) on given proposals: the published VOC2007 detection protocol.

The net is the release's CaffeNet detector (``rbgirshick/fast-rcnn``: ``models/*/train.prototxt``)
on the suite's trunk in the deploy geometry: conv1..conv5 over the whole (padded) image, RoI max
pooling of conv5 to a k x k grid (k = the trunk's fc6 kernel, 6 for AlexNet) at spatial scale 1/16
(``torchvision.ops.roi_pool``, the Caffe ``ROIPooling`` layer's rounding and bins), then fc6 and fc7 of
the trunk as fully connected layers, each followed by ReLU and dropout, and two fresh layers:
``cls_score`` (21 classes with background, weights N(0, 0.01)) and ``bbox_pred`` (4 per class,
N(0, 0.001)); biases start at zero.

Box coordinates are 0-based inclusive pixels, as in the release. Its formulas are kept exactly:
IoU counts ``+1`` pixel widths (``utils.cython_bbox``), while the regression targets use
``x2 - x1 + EPS`` widths (``roi_data_layer/roidb.py``, ``fast_rcnn/test.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms, roi_pool

from ssl_bench.data.images import SkipCounter
from ssl_bench.errors import CheckpointError
from ssl_bench.models.inputs import trunk_input
from ssl_bench.models.optim import caffe_bias_optimizers
from ssl_bench.pretext.common import check_finite
from ssl_bench.transfer.voc_det import NUM_CLASSES, DetectionEvaluation, TrunkBackbone, trunk_config

__all__ = ["EPS", "SPATIAL_SCALE", "box_iou_inclusive", "encode_boxes", "decode_boxes", "sample_rois",
           "fast_rcnn_loss", "detect", "FastRCNN", "FastRCNNTask", "normalise_targets"]

EPS = 1e-14               # the release's cfg.EPS, added to widths and heights of the regression
SPATIAL_SCALE = 1.0 / 16  # conv5 stride of AlexNet/CaffeNet (roi_pool5 ``spatial_scale: 0.0625``)


# ------------------------------------------------------------------------------------ box arithmetic

def box_iou_inclusive(a: Tensor, b: Tensor) -> Tensor:
    """IoU of inclusive boxes (widths x2 - x1 + 1): a N x 4, b M x 4 -> N x M."""
    wa, ha = a[:, 2] - a[:, 0] + 1, a[:, 3] - a[:, 1] + 1
    wb, hb = b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1
    iw = (torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0]) + 1).clamp(min=0)
    ih = (torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1]) + 1).clamp(min=0)
    inter = iw * ih
    return inter / ((wa * ha)[:, None] + (wb * hb)[None, :] - inter)


def _centres(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[:, 2] - boxes[:, 0] + EPS
    h = boxes[:, 3] - boxes[:, 1] + EPS
    return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h


def encode_boxes(rois: Tensor, gt: Tensor) -> Tensor:
    """Regression targets (dx, dy, dw, dh) of ``gt`` relative to ``rois`` (both N x 4) -> N x 4:
    dx = (gx - px) / pw, dy = (gy - py) / ph, dw = log(gw / pw), dh = log(gh / ph)."""
    px, py, pw, ph = _centres(rois.double())
    gx, gy, gw, gh = _centres(gt.double())
    return torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], 1).to(rois.dtype)


def decode_boxes(rois: Tensor, deltas: Tensor) -> Tensor:
    """Boxes from ``rois`` N x 4 and deltas N x 4K (K classes, 4 per class) -> N x 4K."""
    px, py, pw, ph = (v[:, None] for v in _centres(rois.to(deltas.dtype)))
    dx, dy, dw, dh = deltas[:, 0::4], deltas[:, 1::4], deltas[:, 2::4], deltas[:, 3::4]
    cx, cy = dx * pw + px, dy * ph + py
    w, h = torch.exp(dw) * pw, torch.exp(dh) * ph
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], 2).reshape(deltas.shape)


def clip_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    """Clip N x 4K inclusive boxes to an image of height x width."""
    out = boxes.clone()
    out[:, 0::2] = out[:, 0::2].clamp(0, width - 1)
    out[:, 1::2] = out[:, 1::2].clamp(0, height - 1)
    return out


# ------------------------------------------------------------------------------------ sampling

def assign_rois(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The release's roidb for one image: ground truth first, then the proposals.

    Args: proposals P x 4, gt_boxes G x 4 (inclusive), gt_labels G in 1..20.
    Returns: (boxes (G+P) x 4, max IoU (G+P), label of the best-overlapping gt box (0 where the IoU
    is 0), its regression target (G+P) x 4).
    """
    boxes = torch.cat([gt_boxes, proposals]).float()
    if len(gt_boxes) == 0:
        zeros = torch.zeros(len(boxes))
        return boxes, zeros, zeros.long(), torch.zeros(len(boxes), 4)
    iou = box_iou_inclusive(boxes, gt_boxes.float())
    overlap, best = iou.max(1)
    labels = torch.where(overlap > 0, gt_labels[best], torch.zeros_like(gt_labels[best]))
    return boxes, overlap, labels, encode_boxes(boxes, gt_boxes.float()[best])


def sample_rois(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, rois_per_image: int = 64,
                fg_fraction: float = 0.25, fg_thresh: float = 0.5, bg_thresh_hi: float = 0.5,
                bg_thresh_lo: float = 0.1, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
    """One image's training RoIs as ``roi_data_layer/minibatch.py::_sample_rois``.

    Foreground: IoU >= fg_thresh with a gt box, at most round(fg_fraction * rois_per_image) drawn
    without replacement; background: IoU in [bg_thresh_lo, bg_thresh_hi), filling the rest (fewer
    when the image has fewer). Ground-truth boxes are candidates too.
    Returns (rois R x 4, labels R (0 = background), raw targets R x 4 (zero for background)).
    """
    boxes, overlap, labels, targets = assign_rois(proposals, gt_boxes, gt_labels)
    fg = torch.nonzero(overlap >= fg_thresh).flatten()
    bg = torch.nonzero((overlap < bg_thresh_hi) & (overlap >= bg_thresh_lo)).flatten()
    n_fg = min(int(round(fg_fraction * rois_per_image)), len(fg))
    fg = fg[torch.randperm(len(fg), generator=generator)[:n_fg]]
    bg = bg[torch.randperm(len(bg), generator=generator)[:min(rois_per_image - n_fg, len(bg))]]
    keep = torch.cat([fg, bg])
    out_labels = labels[keep].clone()
    out_labels[n_fg:] = 0
    out_targets = targets[keep].clone()
    out_targets[n_fg:] = 0
    return boxes[keep], out_labels, out_targets


# ------------------------------------------------------------------------------------ loss and test

def fast_rcnn_loss(scores: Tensor, deltas: Tensor, labels: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Softmax cross-entropy averaged over the R RoIs, plus smooth L1 (beta 1) of the labelled class's
    4 normalised targets, summed and divided by R (Caffe's ``SmoothL1Loss`` with the release's
    ``bbox_loss_weights``); lambda = 1. scores R x 21, deltas R x 84, labels R, targets R x 4."""
    loss_cls = F.cross_entropy(scores, labels)
    fg = labels > 0
    pred = deltas.view(len(deltas), -1, 4)[fg, labels[fg]]
    loss_bbox = F.smooth_l1_loss(pred, targets[fg], beta=1.0, reduction="sum") / max(len(labels), 1)
    return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}


def detect(probs: Tensor, boxes: Tensor, score_thresh: float = 0.05, nms_thresh: float = 0.3,
           max_per_image: int = 100) -> dict[str, Tensor]:
    """``fast_rcnn/test.py::test_net`` for one image: per class (background skipped) the boxes scoring
    above ``score_thresh``, per-class NMS (inclusive IoU above ``nms_thresh`` suppresses), then over
    all classes the detections scoring at least the ``max_per_image``-th best.
    probs R x K, boxes R x 4K -> {"boxes" D x 4, "scores" D, "labels" D in 1..K-1}."""
    out_b, out_s, out_l = [], [], []
    for c in range(1, probs.shape[1]):
        keep = torch.nonzero(probs[:, c] > score_thresh).flatten()
        b, s = boxes[keep, 4 * c:4 * c + 4].float(), probs[keep, c].float()
        # inclusive boxes: IoU with +1 widths = continuous IoU of (x1, y1, x2 + 1, y2 + 1)
        kept = nms(torch.cat([b[:, :2], b[:, 2:] + 1], 1), s, nms_thresh)
        out_b.append(b[kept]), out_s.append(s[kept]), out_l.append(torch.full((len(kept),), c))
    b, s, labels = torch.cat(out_b), torch.cat(out_s), torch.cat(out_l)
    if max_per_image > 0 and len(s) > max_per_image:
        keep = s >= torch.sort(s).values[-max_per_image]
        b, s, labels = b[keep], s[keep], labels[keep]
    return {"boxes": b, "scores": s, "labels": labels}


# ------------------------------------------------------------------------------------ model

class FastRCNN(nn.Module):
    """conv1..conv5 of a trunk, RoI max pooling, fc6/fc7, cls_score and bbox_pred.

    Args:
        trunk: prepared trunk with ``forward_features(x, ("conv5",))`` (deploy geometry for the paper).
        fc6, fc7: fully connected layers (``ssl_bench.models.prepare.fc_layers``); fc6 reads C x k x k.
        dropout: after fc6 and fc7 (the release's drop6/drop7, 0.5).
    """

    def __init__(self, trunk: nn.Module, fc6: nn.Linear, fc7: nn.Linear, dropout: float = 0.5,
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.backbone = TrunkBackbone(trunk)
        self.pool_size = int(trunk_config(trunk).get("fc6_kernel", 6))
        c, k = self.backbone.out_channels, self.pool_size
        if fc6.in_features != c * k * k or fc7.in_features != fc6.out_features:
            raise CheckpointError(f"fast_rcnn: fc6 reads {fc6.in_features} inputs and fc7 {fc7.in_features}; "
                                  f"expected conv5 width {c} x {k} x {k} = {c * k * k} and fc6's {fc6.out_features}")
        self.head = nn.Sequential(nn.Flatten(1), fc6, nn.ReLU(inplace=True), nn.Dropout(dropout),
                                  fc7, nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.cls_score = nn.Linear(fc7.out_features, num_classes)
        self.bbox_pred = nn.Linear(fc7.out_features, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, 0.0, 0.01)
        nn.init.normal_(self.bbox_pred.weight, 0.0, 0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, images: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        """images B x C x H x W (trunk input, zero-padded), rois R x 5 (batch index, x1, y1, x2, y2 in
        the scaled image's pixels) -> (class scores R x 21, box deltas R x 84)."""
        conv5 = self.backbone(images)
        pooled = roi_pool(conv5, rois, (self.pool_size, self.pool_size), SPATIAL_SCALE)
        x = self.head(pooled)
        return self.cls_score(x), self.bbox_pred(x)


def pad_batch(images: Sequence[Tensor]) -> Tensor:
    """Float C x H_i x W_i images -> B x C x max H x max W, zero-padded at the bottom and right (zero is
    the mean pixel of every trunk input convention, as the release pads its mean-subtracted blob)."""
    h, w = max(i.shape[-2] for i in images), max(i.shape[-1] for i in images)
    return torch.stack([F.pad(i, (0, w - i.shape[-1], 0, h - i.shape[-2])) for i in images])


def roi_batch(rois: Sequence[Tensor]) -> Tensor:
    """Per-image R_i x 4 RoIs -> sum R_i x 5 with the image index first."""
    return torch.cat([torch.cat([torch.full((len(r), 1), float(i), device=r.device), r.float()], 1)
                      for i, r in enumerate(rois)])


class FastRCNNTask(DetectionEvaluation, pl.LightningModule):
    """Fast R-CNN fine-tuning on VOC detection (the ``protocol=paper`` detector).

    Batches come from ``ssl_bench.transfer.fast_rcnn_data.FastRCNNData``: uint8 images already scaled,
    per-image RoIs in the scaled pixels, and for training the sampled labels and normalised targets.
    The per-class target means and stds (buffers, so a checkpoint keeps them) are the training set's,
    taken from the datamodule when fitting starts; tests un-normalise the predicted deltas with them.

    Args:
        trunk, optimizer, scheduler: as ``VOCDetectionTask``; fc6, fc7: the trunk's as Linear layers.
        dropout: drop6/drop7. bias_lr_mult, bias_decay_mult: Caffe's second ``param`` block (2, 0).
        test_nms, score_thresh, max_per_image: ``test_net`` (0.3, 0.05, 100).
    """

    def __init__(self, trunk: nn.Module, optimizer: Callable[..., Any], scheduler: Callable[..., Any] | None = None,
                 fc6: nn.Linear | None = None, fc7: nn.Linear | None = None, dropout: float = 0.5,
                 bias_lr_mult: float = 2.0, bias_decay_mult: float = 0.0, test_nms: float = 0.3,
                 score_thresh: float = 0.05, max_per_image: int = 100, year: str | int = "2007") -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["trunk", "optimizer", "scheduler", "fc6", "fc7"])
        space = getattr(trunk, "input_space", None)
        if space is None or fc6 is None or fc7 is None:
            raise CheckpointError("fast_rcnn: needs a trunk with input_space and its fc6/fc7 as Linear layers")
        self.input_space, self.year = space, str(year)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.bias_lr_mult, self.bias_decay_mult = float(bias_lr_mult), float(bias_decay_mult)
        self.test_nms, self.score_thresh, self.max_per_image = float(test_nms), float(score_thresh), int(max_per_image)
        self.model = FastRCNN(trunk, fc6, fc7, dropout)
        self.register_buffer("bbox_means", torch.zeros(NUM_CLASSES, 4))
        self.register_buffer("bbox_stds", torch.ones(NUM_CLASSES, 4))
        self.skips = SkipCounter()
        self.init_evaluation()

    def forward(self, images: Sequence[Tensor], rois: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """uint8 images (already scaled) and their R_i x 4 RoIs -> (scores sum R_i x 21, deltas x 84)."""
        x = pad_batch([trunk_input(i[None].to(self.device), self.input_space)[0] for i in images])
        return self.model(x, roi_batch([r.to(self.device) for r in rois]))

    def on_fit_start(self) -> None:
        stats = getattr(getattr(self.trainer, "datamodule", None), "bbox_stats", None)
        if stats is not None:
            self.bbox_means.copy_(stats[0])
            self.bbox_stds.copy_(stats[1])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        self.skips.add(batch["skipped"])
        if not batch["images"]:
            return None
        scores, deltas = self(batch["images"], batch["rois"])
        losses = fast_rcnn_loss(scores, deltas, batch["labels"].to(self.device),
                                batch["bbox_targets"].to(self.device))
        loss = losses["loss_cls"] + losses["loss_bbox"]
        check_finite(loss, self.global_step, f"{self.prefix}/loss")
        n = len(batch["images"])
        self.log(f"{self.prefix}/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({f"{self.prefix}/{k}": v for k, v in losses.items()}, batch_size=n)
        return loss

    def detections(self, scores: Tensor, deltas: Tensor, proposals: Tensor, size: tuple[int, int]
                   ) -> dict[str, Tensor]:
        """One image's detections in original pixels from its R x 21 scores and R x 84 normalised
        deltas on its R x 4 original-pixel proposals (class-specific regression, clipped)."""
        deltas = deltas * self.bbox_stds.reshape(1, -1) + self.bbox_means.reshape(1, -1)
        boxes = clip_boxes(decode_boxes(proposals.to(deltas.device).double(), deltas.double()), *size)
        return detect(F.softmax(scores, 1), boxes, self.score_thresh, self.test_nms, self.max_per_image)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.skips.add(batch["skipped"])
        if not batch["images"]:
            return
        scores, deltas = self(batch["images"], batch["rois"])
        counts = [len(r) for r in batch["rois"]]
        for s, d, t in zip(scores.split(counts), deltas.split(counts), batch["targets"]):
            self.add_test_image(self.detections(s, d, t["proposals"], t["size"]), t)

    def configure_optimizers(self) -> Any:
        """SGD on [weights, biases]; the biases' lr x bias_lr_mult and decay x bias_decay_mult."""
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        biases = [p for n, p in named if n.endswith(".bias") and p.dim() == 1]
        ids = {id(p) for p in biases}
        opt = self.optimizer_factory([{"params": [p for _, p in named if id(p) not in ids]}, {"params": biases}])
        return caffe_bias_optimizers(opt, self.scheduler_factory, self.bias_lr_mult, self.bias_decay_mult)


def normalise_targets(labels: Tensor, targets: Tensor, stats: Mapping[str, Tensor] | tuple[Tensor, Tensor]
                      ) -> Tensor:
    """(targets - mean[label]) / std[label] for the foreground rows (background rows stay zero)."""
    means, stds = stats if isinstance(stats, tuple) else (stats["means"], stats["stds"])
    out = targets.clone()
    fg = labels > 0
    out[fg] = (targets[fg] - means[labels[fg]]) / stds[labels[fg]]
    return out
