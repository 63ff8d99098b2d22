"""Ranking metrics for multi-label classification (PASCAL VOC style average precision).

Label conventions
-----------------
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

Ties
----
Scores that are equal form one threshold: the precision-recall curve has one point per *distinct*
score, reached once all items with that score are included (as in scikit-learn).  The devkit and
Goyal et al.'s code instead sort with ``argsort`` and step through tied items one by one, which makes
their AP depend on the order of tied items; without ties the definitions coincide.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["AP_MODES", "average_precision", "mean_average_precision", "precision_recall_points"]

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
            the VOC2010+ devkit's AP and the one in Goyal et al.'s SVM code (method.md 3.3).
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
