"""PASCAL VOC metrics: classification AP, detection AP, segmentation confusion matrix / IoU.

* Multi-label classification: :func:`average_precision`, :func:`mean_average_precision`.
* Detection (one class at a time, the devkit's ``VOCevaldet``): :func:`detection_ap`,
  :func:`detection_map`, :func:`box_iou_voc`.
* Semantic segmentation: :func:`confusion_matrix`, :func:`per_class_iou`, :func:`mean_iou`,
  :func:`pixel_accuracy`.

Classification label conventions
--------------------------------
A label vector may use

* ``{1, 0, -1}`` -- the VOC devkit's convention: 1 = present, -1 = absent, 0 = "difficult"
  (the class occurs only in instances marked difficult).  Entries with label 0 are **ignored**:
  they are neither true nor false positives, as in the devkit's ``VOCevalcls.m``
  (``tp = gt > 0; fp = gt < 0``).
* ``{1, -1}`` -- present / absent.
* ``{1, 0}`` -- present / absent (the usual 0/1 multi-hot encoding); here 0 is a *negative*.

So label 0 means "ignore" **only when the labels also contain -1**; otherwise it means "absent".
Pass ``ignore_zero=True`` / ``False`` to say so explicitly (e.g. for a devkit column that happens
to hold only 1s and 0s).  ``mean_average_precision`` decides the convention once for the whole
matrix, so one VOC label matrix is read the same way for every class.

Classification ties
-------------------
Scores that are equal form one threshold: the precision-recall curve has one point per *distinct*
score, reached once all items with that score are included (as in scikit-learn).  The devkit and
Goyal et al.'s code instead sort with ``argsort`` and step through tied items one by one, which makes
their AP depend on the order of tied items; without ties the definitions coincide.
(:func:`detection_ap` follows the devkit instead: see its docstring.)
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, Union

import numpy as np

__all__ = ["voc_prefix", "AP_MODES", "Detections", "GroundTruth", "average_precision", "box_iou_voc",
           "confusion_matrix", "detection_ap", "detection_map", "mean_average_precision", "mean_iou", "per_class_iou",
           "pixel_accuracy", "precision_recall_points"]

APMode = Literal["area", "voc07"]
AP_MODES: tuple[str, ...] = ("area", "voc07")


def _check_labels(labels: np.ndarray, what: str) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.dtype == np.bool_:
        return lab.astype(np.int8)
    if not np.issubdtype(lab.dtype, np.number):
        raise ValueError(f"{what}: expected numeric labels in {{1, 0, -1}}, got dtype {lab.dtype}")
    bad = ~np.isin(lab, (-1, 0, 1))
    if bad.any():
        raise ValueError(f"{what}: labels must be 1 (present), 0 (difficult / absent) or -1 "
                         f"(absent); found {np.unique(lab[bad])[:5].tolist()}")
    return lab.astype(np.int8)


def _check_scores(scores: np.ndarray, what: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{what}: scores must be finite (found NaN or inf)")
    return s


def precision_recall_points(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve of a ranking, one point per distinct score (highest score first).

    scores: float N; positive: bool N (the items to rank; ignored items must already be removed).
    Returns (true positives int K, predicted positives int K, number of positives), where point k
    includes every item whose score is >= the k-th largest distinct score.  Integer counts let the
    callers compare recalls exactly.
    """
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], positive[order]
    tp = np.cumsum(p, dtype=np.int64)
    # Last index of each run of equal scores: the curve is only defined after a whole tie group.
    last = np.flatnonzero(np.append(s[1:] != s[:-1], True))
    return tp[last], last.astype(np.int64) + 1, np.int64(p.sum())


def average_precision(scores: np.ndarray, labels: np.ndarray, mode: APMode = "area",
                      ignore_zero: bool | None = None) -> float:
    """Average precision of one class.

    scores: float N, higher = more confident that the class is present.
    labels: N, values in {1, 0, -1} (see the module docstring): positives are ``label > 0``;
        ``label == 0`` is ignored when ``ignore_zero`` is True, a negative when False; with
        ``ignore_zero=None`` (default) it is ignored exactly when some label is -1.
    mode:
        "area": area under the interpolated PR curve -- precision is first made non-increasing
            from the right (``p_interp(r) = max_{r' >= r} p(r')``), then
            ``AP = sum_k (R_k - R_{k-1}) * p_interp(R_k)`` over the curve's points (R_0 = 0).  This is
            the VOC2010+ devkit's AP and the one in Goyal et al.'s SVM code (docs/protocols.md §3.3).
            scikit-learn's ``average_precision_score`` is the same sum *without* interpolation, so
            the two agree whenever precision never rises as recall grows, and ours is larger otherwise.
        "voc07": the VOC2007 devkit's 11-point AP, the mean over t in {0, 0.1, ..., 1} of the maximum
            precision at recall >= t (0 when no point reaches t).  Recall >= t is decided exactly
            (integer arithmetic), so a recall of exactly 3/10 counts for t = 0.3.
    Returns a float in [0, 1].  Raises ValueError for an unknown mode, mismatched shapes, labels
    outside {1, 0, -1}, non-finite scores, or no positives.
    """
    if mode not in AP_MODES:
        raise ValueError(f"mode: expected one of {AP_MODES}, got {mode!r}")
    s = _check_scores(scores, "average_precision")
    lab = _check_labels(labels, "average_precision")
    if s.ndim != 1 or s.shape != lab.shape:
        raise ValueError(f"average_precision: scores and labels must be 1-D of the same length, got "
                         f"shapes {s.shape} and {lab.shape}")
    if ignore_zero is None:
        ignore_zero = bool((lab < 0).any())
    keep = lab != 0 if ignore_zero else np.ones(lab.shape, dtype=bool)
    return _ap(s[keep], lab[keep] > 0, mode)


def _ap(scores: np.ndarray, positive: np.ndarray, mode: str) -> float:
    tp, n_pred, n_pos = precision_recall_points(scores, positive)
    if n_pos == 0:
        raise ValueError("average_precision: no positive labels (AP is undefined)")
    precision = tp / n_pred
    if mode == "area":
        # Running maximum from the right = the monotone envelope of the PR curve.
        interp = np.maximum.accumulate(precision[::-1])[::-1]
        d_recall = np.diff(np.concatenate(([0], tp))) / n_pos
        return float(np.sum(d_recall * interp))
    # voc07: recall >= k/10  <=>  10 * tp >= k * n_pos (exact, no floating-point threshold).
    total = 0.0
    for k in range(11):
        reached = 10 * tp >= k * n_pos
        total += float(precision[reached].max()) if reached.any() else 0.0
    return total / 11.0


def mean_average_precision(scores: np.ndarray, labels: np.ndarray, mode: APMode = "area",
                           ignore_zero: bool | None = None,
                           class_names: list[str] | tuple[str, ...] | None = None) -> tuple[float, np.ndarray]:
    """Mean over classes of ``average_precision``.

    scores: float N x C; labels: N x C in {1, 0, -1}.  The convention for label 0 is decided once
    for the whole matrix (ignored when any entry is -1, unless ``ignore_zero`` is given).
    class_names: optional C names, used in error messages (e.g. a class without positives).
    Returns (mAP, per-class AP float64 C).
    """
    s = _check_scores(scores, "mean_average_precision")
    lab = _check_labels(labels, "mean_average_precision")
    if s.ndim != 2 or s.shape != lab.shape:
        raise ValueError(f"mean_average_precision: scores and labels must be N x C of the same shape, "
                         f"got {s.shape} and {lab.shape}")
    if mode not in AP_MODES:
        raise ValueError(f"mode: expected one of {AP_MODES}, got {mode!r}")
    if ignore_zero is None:
        ignore_zero = bool((lab < 0).any())
    aps = np.empty(s.shape[1], dtype=np.float64)
    for c in range(s.shape[1]):
        name = class_names[c] if class_names is not None else f"column {c}"
        try:
            aps[c] = average_precision(s[:, c], lab[:, c], mode, ignore_zero=ignore_zero)
        except ValueError as e:
            raise ValueError(f"class {name!r}: {e}") from None
    return float(aps.mean()), aps


# =============================================================================================
# Object detection: PASCAL VOC average precision of one class (VOCevaldet / py-faster-rcnn voc_eval)
# =============================================================================================

class Detections(NamedTuple):
    """The detections of ONE class, column-wise.

    image_ids: N hashable image identifiers (e.g. VOC ids such as ``"2007_000027"``).
    scores: float N, higher = more confident.
    boxes: float N x 4, ``(x1, y1, x2, y2)`` in VOC pixel coordinates, *inclusive*: a box covering
        only pixel column 5 has ``x1 = x2 = 5`` and width ``x2 - x1 + 1 = 1``.
    """

    image_ids: Sequence[Hashable]
    scores: np.ndarray
    boxes: np.ndarray


class GroundTruth(NamedTuple):
    """The ground-truth boxes of ONE class in ONE image.

    boxes: M x 4 ``(x1, y1, x2, y2)``, inclusive VOC pixel coordinates (as in the annotation XML).
    difficult: bool M, the annotation's ``difficult`` flag.
    """

    boxes: np.ndarray
    difficult: np.ndarray


DetectionsLike = Union[Detections, Mapping[str, Any], Sequence[tuple[Hashable, float, Sequence[float]]]]
GroundTruthsLike = Mapping[Hashable, Union[GroundTruth, tuple[Any, Any]]]


def _check_boxes(boxes: Any, what: str) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{what}: boxes must be K x 4 (x1, y1, x2, y2), got shape {b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError(f"{what}: box coordinates must be finite")
    # Inclusive coordinates: width x2 - x1 + 1 must be positive (a 1-pixel box has x1 == x2).
    bad = (b[:, 2] - b[:, 0] + 1 <= 0) | (b[:, 3] - b[:, 1] + 1 <= 0)
    if bad.any():
        raise ValueError(f"{what}: boxes need x2 - x1 + 1 > 0 and y2 - y1 + 1 > 0; "
                         f"first offending box {b[np.flatnonzero(bad)[0]].tolist()}")
    return b


def box_iou_voc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes in the VOC devkit's inclusive-pixel convention.

    a: K x 4, b: M x 4, each row ``(x1, y1, x2, y2)`` with inclusive coordinates, so a box's width
    is ``x2 - x1 + 1`` and the overlap width of two boxes ``min(x2) - max(x1) + 1`` (clipped at 0),
    exactly as in ``VOCevaldet.m`` and py-faster-rcnn's ``voc_eval``.  A single box (shape 4) is
    accepted for either argument.  Returns float64 K x M (vectorised, no Python loops).
    """
    a = _check_boxes(np.atleast_2d(np.asarray(a, dtype=np.float64)), "box_iou_voc")
    b = _check_boxes(np.atleast_2d(np.asarray(b, dtype=np.float64)), "box_iou_voc")
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1.0
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1.0
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    area_a = (a[:, 2] - a[:, 0] + 1.0) * (a[:, 3] - a[:, 1] + 1.0)
    area_b = (b[:, 2] - b[:, 0] + 1.0) * (b[:, 3] - b[:, 1] + 1.0)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union


def _as_detections(detections: DetectionsLike) -> Detections:
    if isinstance(detections, Detections):
        ids, scores, boxes = detections
    elif isinstance(detections, Mapping):
        missing = {"image_ids", "scores", "boxes"} - set(detections)
        if missing:
            raise ValueError(f"detection_ap: detections mapping lacks keys {sorted(missing)}")
        ids, scores, boxes = detections["image_ids"], detections["scores"], detections["boxes"]
    else:                                              # sequence of (image_id, score, box) triples
        triples = list(detections)
        for t in triples:
            if len(t) != 3:
                raise ValueError("detection_ap: detections must be a Detections, a mapping with keys "
                                 "image_ids/scores/boxes, or a sequence of (image_id, score, box)")
        ids = [t[0] for t in triples]
        scores = [t[1] for t in triples]
        boxes = [t[2] for t in triples]
    ids = list(ids)
    s = _check_scores(np.asarray(scores, dtype=np.float64).reshape(-1), "detection_ap")
    bx = _check_boxes(boxes, "detection_ap (detections)")
    if not (len(ids) == s.shape[0] == bx.shape[0]):
        raise ValueError(f"detection_ap: {len(ids)} image ids, {s.shape[0]} scores and {bx.shape[0]} "
                         "boxes; expected the same number of each")
    return Detections(ids, s, bx)


def _as_ground_truths(ground_truths: GroundTruthsLike) -> dict[Hashable, GroundTruth]:
    out: dict[Hashable, GroundTruth] = {}
    for img, gt in ground_truths.items():
        boxes, difficult = gt
        bx = _check_boxes(boxes, f"detection_ap (ground truth of image {img!r})")
        diff = np.asarray(difficult, dtype=bool).reshape(-1)
        if diff.shape[0] != bx.shape[0]:
            raise ValueError(f"detection_ap: image {img!r} has {bx.shape[0]} boxes but "
                             f"{diff.shape[0]} difficult flags")
        out[img] = GroundTruth(bx, diff)
    return out


def _match_detections(det: Detections, gts: dict[Hashable, GroundTruth],
                      iou_threshold: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy devkit matching.  Returns (tp int N, fp int N) in descending-score order, and npos."""
    npos = int(sum(int((~g.difficult).sum()) for g in gts.values()))
    order = np.argsort(-det.scores, kind="stable")
    # IoUs per image, computed once for all of that image's detections.
    rows: dict[Hashable, list[int]] = {}
    for i, img in enumerate(det.image_ids):
        rows.setdefault(img, []).append(i)
    ious: dict[int, np.ndarray] = {}
    for img, idx in rows.items():
        g = gts.get(img)
        if g is None or g.boxes.shape[0] == 0:
            continue
        ov = box_iou_voc(det.boxes[idx], g.boxes)
        for k, i in enumerate(idx):
            ious[i] = ov[k]
    detected = {img: np.zeros(g.boxes.shape[0], dtype=bool) for img, g in gts.items()}
    n = len(order)
    tp = np.zeros(n, dtype=np.int64)
    fp = np.zeros(n, dtype=np.int64)
    for d, i in enumerate(order):
        ov = ious.get(int(i))
        if ov is None:                                 # no GT of this class in that image
            fp[d] = 1
            continue
        j = int(np.argmax(ov))                         # first maximum, as the devkit's `ov > ovmax`
        if ov[j] > iou_threshold:                      # strictly greater
            img = det.image_ids[i]
            if gts[img].difficult[j]:
                continue                               # matches a difficult box: ignored
            if not detected[img][j]:
                tp[d] = 1
                detected[img][j] = True
            else:
                fp[d] = 1                              # duplicate detection
        else:
            fp[d] = 1
    return tp, fp, npos


def detection_ap(detections: DetectionsLike, ground_truths: GroundTruthsLike, iou_threshold: float = 0.5,
                 use_07_metric: bool = True) -> float:
    """PASCAL VOC detection average precision of ONE class (``VOCevaldet.m`` / py-faster-rcnn ``voc_eval``).

    detections: the class's detections over the whole test set, as
        * a :class:`Detections` ``(image_ids, scores N, boxes N x 4)``, or
        * a mapping with keys ``"image_ids"``, ``"scores"``, ``"boxes"`` (same meaning), or
        * a sequence of ``(image_id, score, box)`` triples (box = 4 numbers).
        Boxes are ``(x1, y1, x2, y2)`` in inclusive VOC pixel coordinates.
    ground_truths: mapping ``image_id -> (boxes M x 4, difficult bool M)`` (a :class:`GroundTruth` or
        any pair) holding this class's annotated boxes.  Images without boxes of the class may be
        omitted or given with M = 0; a detection in such an image is a false positive.
    iou_threshold: a detection matches a GT box when IoU (see :func:`box_iou_voc`, the +1 pixel
        convention) is **strictly greater** than this (the devkit's ``ovmax > minoverlap``).
    use_07_metric: True -> VOC2007 11-point AP; False -> VOC2010+ area under the interpolated curve.

    Rules: detections are sorted by descending score (stable sort, so tied detections keep their
    input order, as MATLAB's ``sort``; py-faster-rcnn's unstable ``argsort`` may order ties
    differently).  Each detection is matched to the GT box of its image with the largest IoU (first
    one on ties), whether or not that box is difficult or already detected.  If IoU > threshold: a
    difficult box -> the detection is ignored (neither TP nor FP); a not yet detected box -> TP and the
    box becomes detected; an already detected box -> FP (duplicate).  Otherwise FP.
    ``npos`` = number of non-difficult GT boxes; recall = cumsum(tp) / npos, precision =
    cumsum(tp) / max(cumsum(tp + fp), eps).  Unlike :func:`average_precision`, tied scores are NOT
    grouped: every detection is a point of the curve, as in the devkit.
        11-point: mean over t in {0, 0.1, ..., 1} of the max precision at recall >= t (0 if none).
            ``recall >= t`` is decided exactly in integers (``10 * tp >= k * npos``); the devkit
            and py-faster-rcnn compare against floating-point t (``3 * 0.1 = 0.30000000000000004``),
            so they can miss a recall of exactly 0.3, 0.6 or 0.7 -- the only difference.
        area: ``sum_k (R_k - R_{k-1}) * max_{k' >= k} P_{k'}`` over the detections that raise recall
            (the devkit's ``VOCap`` with its sentinels (0, 0) and (1, 0)).

    Returns a float in [0, 1]: 0.0 when there are no detections; **nan when npos == 0** (no
    non-difficult GT box: recall, hence AP, is undefined; py-faster-rcnn would divide by zero).
    """
    det = _as_detections(detections)
    gts = _as_ground_truths(ground_truths)
    tp, fp, npos = _match_detections(det, gts, float(iou_threshold))
    if npos == 0:
        return float("nan")
    if tp.size == 0:
        return 0.0
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    if use_07_metric:
        total = 0.0
        for k in range(11):
            reached = 10 * ctp >= k * npos
            total += float(precision[reached].max()) if reached.any() else 0.0
        return total / 11.0
    interp = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(interp[tp == 1]) / npos)


def detection_map(detections_per_class: Mapping[Hashable, DetectionsLike],
                  ground_truths_per_class: Mapping[Hashable, GroundTruthsLike], iou_threshold: float = 0.5,
                  use_07_metric: bool = True) -> tuple[float, dict[Hashable, float]]:
    """:func:`detection_ap` for every class of ``ground_truths_per_class``.

    detections_per_class: class -> that class's detections (a class without an entry has no
        detections, AP 0); a class that is not in ``ground_truths_per_class`` -> ValueError.
    ground_truths_per_class: class -> (image_id -> (boxes, difficult)), as for :func:`detection_ap`.
    Returns (mAP, {class: AP}) in the order of ``ground_truths_per_class``.  mAP is the mean over the
    classes whose AP is defined (classes with no non-difficult box give nan and are left out; nan
    if none is defined).
    """
    extra = [c for c in detections_per_class if c not in ground_truths_per_class]
    if extra:
        raise ValueError(f"detection_map: detections for classes without ground truth: {extra}")
    aps = {c: detection_ap(detections_per_class.get(c, ()), gt, iou_threshold, use_07_metric)
           for c, gt in ground_truths_per_class.items()}
    vals = np.array(list(aps.values()), dtype=np.float64)
    defined = vals[~np.isnan(vals)]
    return (float(defined.mean()) if defined.size else float("nan")), aps


# =============================================================================================
# Semantic segmentation: confusion matrix, IoU, pixel accuracy
# =============================================================================================

def _to_numpy_int(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):    # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype == np.bool_:
        a = a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"confusion_matrix: {what} must hold integer class indices, got dtype {a.dtype}")
    return a.reshape(-1).astype(np.int64, copy=False)


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_index: int | None = 255) -> np.ndarray:
    """Pixel confusion matrix of a segmentation: ``cm[t, p]`` = number of pixels of target class t
    predicted as class p (rows = target, columns = prediction).

    pred, target: integer numpy arrays or torch tensors (any device) of the same shape, any number of
        dimensions (flattened; e.g. B x H x W for a batch).
    ignore_index: pixels whose *target* equals it are skipped (VOC's 255 "void" border); None = none.
    Returns int64 ``num_classes x num_classes``.  Computed with one ``np.bincount`` over
    ``target * num_classes + pred``.  Matrices of several batches add up.

    Raises ValueError for different shapes, non-integer dtypes, predictions outside
    ``[0, num_classes)`` (at any pixel, ignored ones included), or targets outside
    ``[0, num_classes)`` that are not ``ignore_index`` (the message lists the offending values).
    Same counts as ``torchmetrics.functional.classification.multiclass_confusion_matrix(pred, target,
    num_classes, ignore_index=ignore_index)`` and ``sklearn.metrics.confusion_matrix`` on the kept pixels.
    """
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"confusion_matrix: num_classes must be a positive integer, got {num_classes!r}")
    c = int(num_classes)
    p_shape = tuple(getattr(pred, "shape", np.shape(pred)))
    t_shape = tuple(getattr(target, "shape", np.shape(target)))
    if p_shape != t_shape:
        raise ValueError(f"confusion_matrix: pred and target shapes differ: {p_shape} vs {t_shape}")
    p = _to_numpy_int(pred, "pred")
    t = _to_numpy_int(target, "target")
    bad_p = (p < 0) | (p >= c)
    if bad_p.any():
        raise ValueError(f"confusion_matrix: predictions must be in [0, {c}); found "
                         f"{np.unique(p[bad_p])[:10].tolist()}")
    keep = t != ignore_index if ignore_index is not None else np.ones(t.shape, dtype=bool)
    bad_t = keep & ((t < 0) | (t >= c))
    if bad_t.any():
        raise ValueError(f"confusion_matrix: targets must be in [0, {c}) or ignore_index={ignore_index}; "
                         f"found {np.unique(t[bad_t])[:10].tolist()}")
    if not keep.all():
        p, t = p[keep], t[keep]
    return np.bincount(t * c + p, minlength=c * c).reshape(c, c).astype(np.int64, copy=False)


def _check_confusion(confusion: Any, what: str) -> np.ndarray:
    cm = np.asarray(confusion.detach().cpu().numpy() if hasattr(confusion, "detach") else confusion)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"{what}: expected a square C x C confusion matrix, got shape {cm.shape}")
    if not np.issubdtype(cm.dtype, np.number) or (cm < 0).any():
        raise ValueError(f"{what}: confusion matrix must hold non-negative counts")
    return cm.astype(np.float64)


def per_class_iou(confusion: Any) -> np.ndarray:
    """Per-class IoU ``TP / (TP + FP + FN)`` from a confusion matrix (rows = target, cols = prediction).

    TP = ``cm[c, c]``, FN = row sum - TP, FP = column sum - TP.  Returns float64 C, **nan** for a class
    absent from both target and prediction (zero denominator).  torchmetrics'
    ``MulticlassJaccardIndex(average="none")`` returns 0 (its ``zero_division``) there instead.
    """
    cm = _check_confusion(confusion, "per_class_iou")
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1) - tp
    out = np.full(tp.shape, np.nan)
    np.divide(tp, denom, out=out, where=denom > 0)
    return out


def mean_iou(confusion: Any) -> float:
    """Mean IoU over the classes with a nonzero denominator (``nanmean`` of :func:`per_class_iou`).

    This is the FCN / VOC convention.  It equals torchmetrics' ``MulticlassJaccardIndex(average="macro",
    ignore_index=...)`` (>= 1.x gives weight 0 to classes absent from target and prediction) with one
    difference: when ``ignore_index`` is itself a valid class index, torchmetrics also drops that
    class from the average, whereas here its row is empty but any pixel *predicted* as that class
    still counts as a false positive, giving IoU 0 for it.  With VOC's 255 the two agree.
    Returns nan when no class has a nonzero denominator (an empty matrix).
    """
    iou = per_class_iou(confusion)
    defined = iou[~np.isnan(iou)]
    return float(defined.mean()) if defined.size else float("nan")


def pixel_accuracy(confusion: Any) -> float:
    """Fraction of (non-ignored) pixels predicted correctly: ``trace / sum``; nan for an empty matrix."""
    cm = _check_confusion(confusion, "pixel_accuracy")
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else float("nan")


def voc_prefix(year: str | int) -> str:
    """Metric namespace of a VOC year: "2007" -> "voc07" (``voc07/cls_fc6/mAP``, ``voc12/seg/mIoU``)."""
    return f"voc{str(year)[-2:]}"
