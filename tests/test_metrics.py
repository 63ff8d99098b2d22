"""Tests for ssl_bench.metrics: hand-worked APs, a brute-force reference, and scikit-learn.

Notation in the comments: a ranking is the label sequence sorted by decreasing score, "+" a
positive and "-" a negative; after the k-th item, precision P = tp / k and recall R = tp / n_pos.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import brute_force_ap
from sklearn.metrics import average_precision_score

from ssl_bench.metrics import (
    Detections,
    GroundTruth,
    average_precision,
    box_iou_voc,
    confusion_matrix,
    detection_ap,
    detection_map,
    mean_average_precision,
    mean_iou,
    per_class_iou,
    pixel_accuracy,
)

# ------------------------------------------------------------------------------- hand-worked

def test_area_and_sklearn_agree_when_precision_never_rises() -> None:
    # Ranking + - +  (n_pos = 2):
    #   k=1: P=1,   R=1/2
    #   k=2: P=1/2, R=1/2
    #   k=3: P=2/3, R=1
    # At the recall steps precision is 1 then 2/3: already non-increasing, so interpolation changes
    # nothing.  area = 1/2 * 1 + 1/2 * 2/3 = 5/6 = sklearn's sum (R_k - R_k-1) P_k.
    # 11-point: t = 0..0.5 (6 values) -> max P at R>=t = 1; t = 0.6..1 (5 values) -> 2/3
    #   -> (6 + 5 * 2/3) / 11 = 28/33.
    s = np.array([0.9, 0.8, 0.7])
    y = np.array([1, -1, 1])
    assert average_precision(s, y, "area") == pytest.approx(5 / 6, abs=1e-12)
    assert average_precision_score(y > 0, s) == pytest.approx(5 / 6, abs=1e-12)
    assert average_precision(s, y, "voc07") == pytest.approx(28 / 33, abs=1e-12)


def test_area_exceeds_sklearn_when_precision_rises() -> None:
    # Ranking - + +  (n_pos = 2):
    #   k=1: P=0,   R=0
    #   k=2: P=1/2, R=1/2
    #   k=3: P=2/3, R=1
    # Interpolated precision at R=1/2 is max(1/2, 2/3) = 2/3, so area = 1/2 * 2/3 + 1/2 * 2/3 = 2/3.
    # sklearn does not interpolate: 1/2 * 1/2 + 1/2 * 2/3 = 7/12.
    # 11-point: every t has max P at R>=t = 2/3 -> 2/3.
    s = np.array([0.9, 0.8, 0.7])
    y = np.array([-1, 1, 1])
    assert average_precision(s, y, "area") == pytest.approx(2 / 3, abs=1e-12)
    assert average_precision_score(y > 0, s) == pytest.approx(7 / 12, abs=1e-12)
    assert average_precision(s, y, "voc07") == pytest.approx(2 / 3, abs=1e-12)


def test_difficult_zero_is_ignored_only_alongside_minus_one() -> None:
    # {1, 0, -1}: the 0 (score 0.95, top of the ranking) is dropped, leaving + - + as in the first
    # test -> 5/6.
    s = np.array([0.9, 0.95, 0.8, 0.1])
    assert average_precision(s, np.array([1, 0, -1, 1])) == pytest.approx(5 / 6, abs=1e-12)
    # {1, 0}: 0 is a negative.  Ranking - + - +  (n_pos = 2):
    #   k=1: P=0, R=0;  k=2: P=1/2, R=1/2;  k=3: P=1/3, R=1/2;  k=4: P=1/2, R=1
    #   interpolated at R=1/2: max(1/2, 1/3, 1/2) = 1/2 -> area = 1/2 * 1/2 + 1/2 * 1/2 = 1/2.
    y01 = np.array([1, 0, 0, 1])
    assert average_precision(s, y01) == pytest.approx(0.5, abs=1e-12)
    assert average_precision_score(y01, s) == pytest.approx(0.5, abs=1e-12)
    # Explicit override: the same {1, 0} vector read with the devkit convention drops both zeros,
    # leaving + + -> 1.
    assert average_precision(s, y01, ignore_zero=True) == pytest.approx(1.0)
    # The ignored item's score cannot matter.
    for v in (-1e9, 0.0, 1e9):
        assert average_precision(np.array([0.9, v, 0.8, 0.1]), np.array([1, 0, -1, 1])) == \
            pytest.approx(5 / 6, abs=1e-12)


def test_ties_form_one_threshold() -> None:
    # Scores 0.5 (+), 0.5 (-), 0.2 (+): the tie is one point, P = 1/2 at R = 1/2; then P = 2/3 at
    # R = 1.  area = 1/2 * 2/3 + 1/2 * 2/3 = 2/3 whichever tied item comes first; sklearn (ties
    # also grouped, no interpolation) = 1/2 * 1/2 + 1/2 * 2/3 = 7/12.
    for s, y in [([0.5, 0.5, 0.2], [1, -1, 1]), ([0.5, 0.5, 0.2], [-1, 1, 1])]:
        s, y = np.array(s), np.array(y)
        assert average_precision(s, y) == pytest.approx(2 / 3, abs=1e-12)
        assert average_precision_score(y > 0, s) == pytest.approx(7 / 12, abs=1e-12)


def test_voc07_counts_recall_exactly_at_a_threshold() -> None:
    # 10 positives.  Ranking: + + + (R = 0.3 exactly, P = 1), then 7 negatives, then 7 positives.
    # After the negatives, precision (3 + m) / (10 + m) for m = 1..7 grows, so for every t >= 0.4
    # the best precision is 10/17.  11-point AP:
    #   t = 0, 0.1, 0.2, 0.3 -> 1;  t = 0.4 .. 1.0 (7 values) -> 10/17
    #   -> (4 + 70/17) / 11 = 138/187.
    # np.arange(0, 1.1, 0.1)[3] is 0.30000000000000004 > 3/10, so code thresholding with it would
    # drop the R = 0.3 point and give (3 + 8 * 10/17) / 11 = 131/187 instead.
    y = np.array([1] * 3 + [-1] * 7 + [1] * 7)
    s = -np.arange(len(y), dtype=float)
    assert np.arange(0, 1.1, 0.1)[3] > 3 / 10
    assert average_precision(s, y, "voc07") == pytest.approx(138 / 187, abs=1e-12)
    # area: R 0.1, 0.2, 0.3 at P = 1; then R 0.4..1.0 at interpolated 10/17
    #   -> 0.3 + 0.7 * 10/17 = 0.3 + 7/17.
    assert average_precision(s, y, "area") == pytest.approx(0.3 + 7 / 17, abs=1e-12)


def test_perfect_and_worst_rankings() -> None:
    y = np.array([1, 1, -1, -1, -1])
    assert average_precision(np.array([5, 4, 3, 2, 1.0]), y) == 1.0
    assert average_precision(np.array([5, 4, 3, 2, 1.0]), y, "voc07") == 1.0
    # Positives last: points P = 1/4 at R = 1/2 and 2/5 at R = 1 -> interpolated 2/5 everywhere.
    assert average_precision(np.array([1, 2, 3, 4, 5.0]), y) == pytest.approx(2 / 5)


# ------------------------------------------------------------------------------- references

@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_on_random_rankings_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    scores = rng.integers(0, 15, size=n).astype(float)    # many ties
    labels = rng.choice([1, -1, 0], size=n, p=[0.3, 0.6, 0.1])
    labels[0] = 1
    for mode in ("area", "voc07"):
        assert average_precision(scores, labels, mode) == pytest.approx(
            brute_force_ap(scores, labels, mode), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_interpolation_never_lowers_sklearn_ap(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.random(200) < 0.2
    y[0] = True
    s = rng.standard_normal(200) + 1.5 * y
    ours = average_precision(s, np.where(y, 1, -1))
    ref = average_precision_score(y, s)
    # Interpolation replaces each precision by a maximum that includes it: >= sklearn, and on random
    # rankings precision does rise somewhere, so strictly greater.
    assert ours > ref
    assert ours - ref < 0.1


def test_mean_average_precision_decides_the_convention_for_the_whole_matrix() -> None:
    # Column 0 is + - + (5/6, first test); column 1 holds only 1 and 0 but the matrix uses -1, so its
    # 0 is "difficult" and ignored: ranking + -> 1.
    s = np.array([[0.9, 0.1], [0.8, 0.9], [0.7, 0.5]])
    y = np.array([[1, 1], [-1, 0], [1, 1]])
    m, aps = mean_average_precision(s, y)
    assert aps == pytest.approx([5 / 6, 1.0])
    assert m == pytest.approx((5 / 6 + 1.0) / 2)
    # Without -1 anywhere, 0 is a negative: column 1 ranks - + + -> 2/3 (second test).
    m2, aps2 = mean_average_precision(s, np.where(y < 0, 0, y))
    assert aps2[1] == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------- errors

def test_errors() -> None:
    s, y = np.array([0.3, 0.2]), np.array([1, -1])
    with pytest.raises(ValueError, match="mode"):
        average_precision(s, y, mode="voc12")
    with pytest.raises(ValueError, match="no positive"):
        average_precision(s, np.array([-1, -1]))
    with pytest.raises(ValueError, match="no positive"):
        average_precision(s, np.array([0, -1]))            # the only "positive-ish" one is difficult
    with pytest.raises(ValueError, match="same length"):
        average_precision(s, np.array([1, -1, 1]))
    with pytest.raises(ValueError, match="labels must be"):
        average_precision(s, np.array([2, -1]))
    with pytest.raises(ValueError, match="finite"):
        average_precision(np.array([np.nan, 0.1]), y)
    with pytest.raises(ValueError, match="'cow'"):
        mean_average_precision(np.zeros((2, 2)), np.array([[1, -1], [1, -1]]), class_names=["cat", "cow"])


# =============================================================================================
# Detection AP (VOCevaldet rules)
# =============================================================================================

# Hand-made set.  npos = 3 (g1, g2, g4; g3 is difficult).
#   image "A": g1 = (0, 0, 9, 9)      10 x 10 = 100 px
#              g2 = (20, 20, 29, 29)  100 px
#              g3 = (40, 40, 49, 49)  difficult
#   image "B": g4 = (0, 0, 19, 9)     20 x 10 = 200 px
HAND_GT = {
    "A": ([[0, 0, 9, 9], [20, 20, 29, 29], [40, 40, 49, 49]], [False, False, True]),
    "B": ([[0, 0, 19, 9]], [False]),
}
# Detections by decreasing score (given to the function in a shuffled order):
#   d1 A 0.9 (0,0,9,9)      IoU(g1) = 1                                -> TP (g1 detected)
#   d2 B 0.8 (0,0,19,9)     IoU(g4) = 1                                -> TP
#   d3 A 0.7 (1,1,10,10)    IoU(g1) = 9*9 / (100+100-81) = 81/119 > .5 -> FP (duplicate of g1)
#   d4 A 0.6 (40,40,49,49)  IoU(g3) = 1, g3 difficult                  -> ignored
#   d5 B 0.5 (10,0,29,9)    IoU(g4) = 10*10 / (200+200-100) = 1/3      -> FP (low IoU)
#   d6 A 0.4 (20,20,29,29)  IoU(g2) = 1                                -> TP
#   d7 B 0.3 (50,50,60,60)  no overlap                                 -> FP
# cum tp: 1 2 2 2 2 3 3;  cum fp: 0 0 1 1 2 2 3
# precision: 1, 1, 2/3, 2/3, 1/2, 3/5, 3/7;  recall: 1/3, 2/3, 2/3, 2/3, 2/3, 1, 1
# 11-point: t = 0 .. 0.6 (7 values): a point with recall >= t has precision 1 (d2: R = 2/3)
#           t = 0.7 .. 1.0 (4 values): only R = 1 points: max(3/5, 3/7) = 3/5
#           -> (7 + 4 * 3/5) / 11 = 47/55
# area: recall steps at d1 (+1/3), d2 (+1/3), d6 (+1/3); interpolated precision there = max of
#       the precisions from that point on: 1, 1, 3/5 -> 1/3 + 1/3 + 1/5 = 13/15
# (Counting d4 as an FP would make d6's precision 3/6 and area 2/3 + 1/6 = 5/6; counting g3 in npos
# would make recall never reach 1.)
HAND_DETS = [
    ("A", 0.6, [40, 40, 49, 49]),
    ("B", 0.3, [50, 50, 60, 60]),
    ("A", 0.9, [0, 0, 9, 9]),
    ("B", 0.5, [10, 0, 29, 9]),
    ("A", 0.4, [20, 20, 29, 29]),
    ("B", 0.8, [0, 0, 19, 9]),
    ("A", 0.7, [1, 1, 10, 10]),
]


def test_detection_ap_hand_worked() -> None:
    assert detection_ap(HAND_DETS, HAND_GT, use_07_metric=True) == pytest.approx(47 / 55, abs=1e-12)
    assert detection_ap(HAND_DETS, HAND_GT, use_07_metric=False) == pytest.approx(13 / 15, abs=1e-12)


def test_detection_ap_input_forms_agree() -> None:
    ids = [d[0] for d in HAND_DETS]
    scores = np.array([d[1] for d in HAND_DETS])
    boxes = np.array([d[2] for d in HAND_DETS], dtype=float)
    gt = {k: GroundTruth(np.array(b, float), np.array(f)) for k, (b, f) in HAND_GT.items()}
    for dets in (Detections(ids, scores, boxes), {"image_ids": ids, "scores": scores, "boxes": boxes}):
        assert detection_ap(dets, gt) == pytest.approx(47 / 55, abs=1e-12)
        assert detection_ap(dets, gt, use_07_metric=False) == pytest.approx(13 / 15, abs=1e-12)


def test_detection_ap_intermediate_values_from_the_hand_case() -> None:
    # Drop d3 (the duplicate): TP TP ign FP TP FP -> cum tp 1 2 2 2 3 3, cum tp+fp 1 2 2 3 4 5
    # precision 1 1 1 2/3 3/4 3/5.  area = 1/3 + 1/3 + 1/3 * 3/4 = 11/12.
    # 11-point: t <= 0.6 -> 1 (7 values); t >= 0.7 -> 3/4 (4 values) -> (7 + 3) / 11 = 10/11.
    dets = [d for d in HAND_DETS if d[1] != 0.7]
    assert detection_ap(dets, HAND_GT, use_07_metric=False) == pytest.approx(11 / 12, abs=1e-12)
    assert detection_ap(dets, HAND_GT, use_07_metric=True) == pytest.approx(10 / 11, abs=1e-12)


def test_detection_ap_perfect_empty_and_undefined() -> None:
    perfect = [("A", 0.9, [0, 0, 9, 9]), ("A", 0.8, [20, 20, 29, 29]), ("B", 0.7, [0, 0, 19, 9])]
    assert detection_ap(perfect, HAND_GT, use_07_metric=True) == 1.0
    assert detection_ap(perfect, HAND_GT, use_07_metric=False) == 1.0
    # A detection of the difficult box, even ranked first, changes nothing.
    with_difficult = [("A", 0.95, [40, 40, 49, 49])] + perfect
    assert detection_ap(with_difficult, HAND_GT, use_07_metric=True) == 1.0
    assert detection_ap(with_difficult, HAND_GT, use_07_metric=False) == 1.0
    assert detection_ap([], HAND_GT) == 0.0
    assert detection_ap([], HAND_GT, use_07_metric=False) == 0.0
    # Only difficult boxes (npos = 0): undefined.
    only_difficult = {"A": ([[0, 0, 9, 9]], [True])}
    assert np.isnan(detection_ap([("A", 0.9, [0, 0, 9, 9])], only_difficult))
    assert np.isnan(detection_ap([], {}))
    # A detection in an image without this class is a false positive: FP then TP ->
    # precision 0, 1/2 at recall 0, 1 -> area 1/2; 11-point 1/2.
    one = {"A": ([[0, 0, 9, 9]], [False])}
    dets = [("Z", 0.9, [0, 0, 9, 9]), ("A", 0.5, [0, 0, 9, 9])]
    assert detection_ap(dets, one, use_07_metric=False) == pytest.approx(0.5)
    assert detection_ap(dets, one, use_07_metric=True) == pytest.approx(0.5)


def test_box_iou_uses_plus_one_pixel_convention() -> None:
    a = np.array([0, 0, 9, 9])            # 10 x 10 = 100 px inclusive (81 without the +1)
    b = np.array([0, 0, 9, 4])            # 10 x 5 = 50 px, inside a -> IoU 50/100 = 1/2 exactly
    assert box_iou_voc(a, b)[0, 0] == 0.5  # without +1: 9*4 / (9*9) = 4/9
    c = np.array([9, 0, 18, 9])           # shares the pixel column x = 9 with a: overlap 1 x 10
    assert box_iou_voc(a, c)[0, 0] == pytest.approx(10 / 190)   # without +1 it would be 0
    assert box_iou_voc(a, [20, 20, 30, 30])[0, 0] == 0.0
    # Vectorised: K x M, symmetric.
    m = box_iou_voc(np.stack([a, b, c]), np.stack([a, b]))
    assert m.shape == (3, 2)
    assert m == pytest.approx(np.array([[1, 0.5], [0.5, 1], [10 / 190, 5 / 145]]))
    with pytest.raises(ValueError, match="x2 - x1"):
        box_iou_voc([5, 0, 3, 9], a)


def test_detection_iou_exactly_at_threshold_is_not_a_match() -> None:
    gt = {"A": ([[0, 0, 9, 9]], [False])}
    at = [("A", 0.9, [0, 0, 9, 4])]        # IoU = 0.5 exactly (see the test above)
    assert detection_ap(at, gt) == 0.0
    assert detection_ap(at, gt, use_07_metric=False) == 0.0
    assert detection_ap(at, gt, iou_threshold=0.49) == 1.0
    above = [("A", 0.9, [0, 0, 9, 5])]     # 60 / 100
    assert detection_ap(above, gt) == 1.0
    # Exactly at threshold against a difficult box: no match, so an FP rather than ignored.
    dgt = {"A": ([[0, 0, 9, 9], [100, 100, 109, 109]], [True, False])}
    assert detection_ap([("A", 0.9, [0, 0, 9, 4]), ("A", 0.8, [100, 100, 109, 109])], dgt,
                        use_07_metric=False) == pytest.approx(0.5)
    assert detection_ap([("A", 0.9, [0, 0, 9, 5]), ("A", 0.8, [100, 100, 109, 109])], dgt,
                        use_07_metric=False) == 1.0


def test_detection_max_iou_box_taken_even_if_already_detected() -> None:
    # Devkit rule: the detection goes to its max-IoU box; if that box is taken it is a duplicate
    # (FP), even though another box would have matched with IoU > 0.5.
    gt = {"A": ([[0, 0, 9, 9], [0, 0, 9, 11]], [False, False])}   # second: 10 x 12
    d1 = ("A", 0.9, [0, 0, 9, 9])       # IoU 1 with g1, 100/120 with g2 -> TP g1
    d2 = ("A", 0.8, [0, 0, 9, 9])       # again IoU 1 with g1 > 100/120 with g2 -> duplicate FP
    # TP FP (npos 2): precision 1, 1/2; recall 1/2, 1/2 -> area 1/2, 11-point 6/11.
    assert detection_ap([d1, d2], gt, use_07_metric=False) == pytest.approx(0.5)
    assert detection_ap([d1, d2], gt, use_07_metric=True) == pytest.approx(6 / 11)


def brute_force_detection_ap(dets: list, gts: dict, thr: float, use_07: bool) -> float:
    """VOCevaldet spelled out: plain loops, exact fractions, the devkit's VOCap with sentinels."""
    from fractions import Fraction

    def iou(a, b):
        iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
        ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
        if iw <= 0 or ih <= 0:
            return Fraction(0)
        inter = iw * ih
        ua = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
        return Fraction(inter, ua)

    npos = sum(1 for boxes, diff in gts.values() for d in diff if not d)
    used = {k: [False] * len(v[0]) for k, v in gts.items()}
    tp, fp = [], []
    for img, _, box in sorted(dets, key=lambda d: -d[1]):       # sorted() is stable
        boxes, diff = gts.get(img, ([], []))
        best, jbest = Fraction(-1), -1
        for j, g in enumerate(boxes):
            o = iou(box, g)
            if o > best:
                best, jbest = o, j
        if jbest >= 0 and best > Fraction(thr).limit_denominator(1000):
            if diff[jbest]:
                tp.append(0), fp.append(0)
            elif not used[img][jbest]:
                used[img][jbest] = True
                tp.append(1), fp.append(0)
            else:
                tp.append(0), fp.append(1)
        else:
            tp.append(0), fp.append(1)
    rec, prec, ctp, cfp = [], [], 0, 0
    for a, b in zip(tp, fp):
        ctp, cfp = ctp + a, cfp + b
        rec.append(Fraction(ctp, npos))
        prec.append(Fraction(ctp, ctp + cfp) if ctp + cfp else Fraction(0))
    if use_07:
        total = Fraction(0)
        for k in range(11):
            ps = [p for r, p in zip(rec, prec) if r >= Fraction(k, 10)]
            total += max(ps) if ps else 0
        return float(total / 11)
    mrec = [Fraction(0)] + rec + [Fraction(1)]
    mpre = [Fraction(0)] + prec + [Fraction(0)]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return float(sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]
                     for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i]))


def _random_detection_case(seed: int) -> tuple[list, dict]:
    rng = np.random.default_rng(seed)
    gts: dict = {}
    for i in range(10):
        m = int(rng.integers(0, 5))
        xy = rng.integers(0, 60, size=(m, 2))
        wh = rng.integers(5, 30, size=(m, 2))
        boxes = [[int(x), int(y), int(x + w), int(y + h)] for (x, y), (w, h) in zip(xy, wh)]
        gts[f"img{i}"] = (boxes, [bool(d) for d in rng.random(m) < 0.2])
    gts["img0"][0].append([0, 0, 20, 20])
    gts["img0"][1].append(False)                                  # npos >= 1
    dets = []
    all_gt = [(k, b) for k, (bs, _) in gts.items() for b in bs]
    for _ in range(200):
        score = float(rng.integers(0, 60)) / 60                   # ties on purpose
        if rng.random() < 0.6:                                    # jittered copy of a GT box
            img, b = all_gt[int(rng.integers(len(all_gt)))]
            j = rng.integers(-4, 5, size=4)
            box = [b[0] + j[0], b[1] + j[1], max(b[2] + j[2], b[0] + j[0]), max(b[3] + j[3], b[1] + j[1])]
        else:
            img = f"img{int(rng.integers(0, 11))}"                # img10 has no GT at all
            x, y = rng.integers(0, 60, size=2)
            w, h = rng.integers(0, 30, size=2)
            box = [x, y, x + w, y + h]
        dets.append((img, score, [int(v) for v in box]))
    return dets, gts


@pytest.mark.parametrize("seed", range(8))
def test_detection_ap_matches_brute_force(seed: int) -> None:
    dets, gts = _random_detection_case(seed)
    for thr in (0.5, 0.3):
        for use_07 in (True, False):
            ours = detection_ap(dets, gts, iou_threshold=thr, use_07_metric=use_07)
            ref = brute_force_detection_ap(dets, gts, thr, use_07)
            assert ours == pytest.approx(ref, abs=1e-12)
            assert 0.0 < ours < 1.0                               # a non-trivial case


def test_detection_map() -> None:
    other_gt = {"A": ([[0, 0, 9, 9]], [False])}
    m, aps = detection_map({"cat": HAND_DETS, "dog": [("A", 1.0, [0, 0, 9, 9])]},
                           {"cat": HAND_GT, "dog": other_gt, "cow": other_gt,
                            "bird": {"A": ([[0, 0, 9, 9]], [True])}})
    assert list(aps) == ["cat", "dog", "cow", "bird"]
    assert aps["cat"] == pytest.approx(47 / 55) and aps["dog"] == 1.0 and aps["cow"] == 0.0
    assert np.isnan(aps["bird"])                                  # left out of the mean
    assert m == pytest.approx((47 / 55 + 1.0 + 0.0) / 3)
    with pytest.raises(ValueError, match="horse"):
        detection_map({"horse": []}, {"cat": HAND_GT})


def test_detection_ap_errors() -> None:
    with pytest.raises(ValueError, match="same number"):
        detection_ap(Detections(["A"], np.array([0.1, 0.2]), np.zeros((2, 4))), HAND_GT)
    with pytest.raises(ValueError, match="K x 4"):
        detection_ap([("A", 0.1, [0, 0, 1])], HAND_GT)
    with pytest.raises(ValueError, match="difficult flags"):
        detection_ap([], {"A": ([[0, 0, 1, 1]], [True, False])})
    with pytest.raises(ValueError, match="finite"):
        detection_ap([("A", float("nan"), [0, 0, 1, 1])], HAND_GT)


# =============================================================================================
# Segmentation: confusion matrix, IoU, pixel accuracy
# =============================================================================================

# target / pred (255 = void):      kept (target, pred) pairs:
#   0 0 1      0 1 1               (0,0) (0,1) (1,1)
#   1 2 255    1 2 0               (1,1) (2,2)  --
#   2 2 255    0 2 2               (2,0) (2,2)  --
# cm (rows target, cols pred) = [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
# IoU: c0 = 1 / (2 + 2 - 1) = 1/3; c1 = 2 / (2 + 3 - 2) = 2/3; c2 = 2 / (3 + 2 - 2) = 2/3
# mean = 5/9; pixel accuracy = 5/7.
HAND_T = np.array([[0, 0, 1], [1, 2, 255], [2, 2, 255]])
HAND_P = np.array([[0, 1, 1], [1, 2, 0], [0, 2, 2]])
HAND_CM = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 2]])


def test_confusion_matrix_hand_worked() -> None:
    cm = confusion_matrix(HAND_P, HAND_T, 3)
    assert cm.dtype == np.int64 and cm.shape == (3, 3)
    np.testing.assert_array_equal(cm, HAND_CM)
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(HAND_P), torch.from_numpy(HAND_T), 3),
                                  HAND_CM)
    # Without an ignore index, 255 is an error; with ignore_index=None and no void it is plain counting.
    with pytest.raises(ValueError, match="255"):
        confusion_matrix(HAND_P, HAND_T, 3, ignore_index=None)
    np.testing.assert_array_equal(confusion_matrix(HAND_P[:, :2], HAND_T[:, :2], 3, ignore_index=None),
                                  [[1, 1, 0], [0, 1, 0], [1, 0, 2]])


def noisy_segmentation(seed: int, shape: tuple[int, ...], target_classes: int, pred_classes: int,
                       void: float, correct: float) -> tuple[np.ndarray, np.ndarray]:
    """Random label maps: target with a ``void`` fraction of 255s; pred = target where a coin with
    p = ``correct`` says so, else a random class below ``pred_classes`` (also on void pixels)."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, target_classes, size=shape)
    target[rng.random(shape) < void] = 255
    pred = np.where(rng.random(shape) < correct, target % 255 % pred_classes, rng.integers(0, pred_classes, size=shape))
    return target, pred


@pytest.mark.parametrize("seed", range(4))
def test_confusion_matrix_matches_sklearn_and_torchmetrics(seed: int) -> None:
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix
    torch = pytest.importorskip("torch")
    tmf = pytest.importorskip("torchmetrics.functional.classification")
    c = 6
    target, pred = noisy_segmentation(seed, (2, 17, 23), c, c, void=0.15, correct=0.5)
    ours = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), c)
    keep = target != 255
    np.testing.assert_array_equal(ours, sk_confusion_matrix(target[keep], pred[keep], labels=range(c)))
    tm = tmf.multiclass_confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), c, ignore_index=255)
    np.testing.assert_array_equal(ours, tm.numpy())
    assert ours.sum() == keep.sum()


def test_confusion_matrix_errors() -> None:
    t = np.array([0, 1, 2])
    with pytest.raises(ValueError, match=r"predictions.*\[3, -1\]|predictions.*\[-1, 3\]"):
        confusion_matrix(np.array([-1, 3, 0]), t, 3)
    with pytest.raises(ValueError, match=r"targets.*\[7\]"):
        confusion_matrix(np.array([0, 1, 2]), np.array([0, 7, 255]), 3)
    with pytest.raises(ValueError, match=r"targets.*\[-1\]"):
        confusion_matrix(np.array([0, 1, 2]), np.array([0, -1, 255]), 3)
    with pytest.raises(ValueError, match="shapes differ"):
        confusion_matrix(np.array([0, 1]), t, 3)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(np.array([0.0, 1.0, 2.0]), t, 3)


def test_iou_and_accuracy_hand_worked() -> None:
    assert per_class_iou(HAND_CM) == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert mean_iou(HAND_CM) == pytest.approx(5 / 9)
    assert pixel_accuracy(HAND_CM) == pytest.approx(5 / 7)
    # A 4th class absent from target and prediction: nan, excluded from the mean.
    cm4 = np.zeros((4, 4), dtype=np.int64)
    cm4[:3, :3] = HAND_CM
    iou4 = per_class_iou(cm4)
    assert np.isnan(iou4[3]) and iou4[:3] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert mean_iou(cm4) == pytest.approx(5 / 9)
    # Class 3 predicted once (for a target-0 pixel) but never a target: IoU 0 and it counts.
    # c0: tp 1, row 3, col 2 -> 1/4; mean (1/4 + 2/3 + 2/3 + 0) / 4 = 19/48.
    cm4[0, 3] = 1
    assert per_class_iou(cm4) == pytest.approx([1 / 4, 2 / 3, 2 / 3, 0.0])
    assert mean_iou(cm4) == pytest.approx(19 / 48)
    # All correct -> 1.
    perfect = confusion_matrix(np.array([0, 1, 1, 2, 2]), np.array([0, 1, 1, 2, 2]), 5)
    assert mean_iou(perfect) == 1.0 and pixel_accuracy(perfect) == 1.0
    assert np.isnan(mean_iou(np.zeros((3, 3)))) and np.isnan(pixel_accuracy(np.zeros((3, 3))))
    with pytest.raises(ValueError, match="square"):
        mean_iou(np.zeros((2, 3)))


@pytest.mark.parametrize("seed", range(4))
def test_mean_iou_matches_torchmetrics_macro(seed: int) -> None:
    torch = pytest.importorskip("torch")
    tmc = pytest.importorskip("torchmetrics.classification")
    c = 8
    # classes 5..7 never in the target
    target, pred = noisy_segmentation(seed, (3, 11, 13), 5, 6, void=0.1, correct=0.6)
    # -> class 5 may be predicted (IoU 0), classes 6 and 7 absent from both.
    cm = confusion_matrix(pred, target, c)
    tp_, tt_ = torch.from_numpy(pred), torch.from_numpy(target)
    macro = tmc.MulticlassJaccardIndex(num_classes=c, ignore_index=255, average="macro")(tp_, tt_)
    assert mean_iou(cm) == pytest.approx(float(macro), abs=1e-6)
    none = tmc.MulticlassJaccardIndex(num_classes=c, ignore_index=255, average="none")(tp_, tt_).numpy()
    ours = per_class_iou(cm)
    absent = np.isnan(ours)
    assert absent[6] and absent[7]
    np.testing.assert_allclose(ours[~absent], none[~absent], atol=1e-6)
    np.testing.assert_array_equal(none[absent], 0.0)          # documented difference: 0 vs nan


def test_mean_iou_differs_from_torchmetrics_when_ignore_index_is_a_class() -> None:
    # The difference documented in mean_iou: ignore_index = 2 (a valid class).  Pixels with target 2
    # are dropped; class 2 is still predicted once, so here its IoU is 0 and counts; torchmetrics
    # drops class 2 from the macro average.
    torch = pytest.importorskip("torch")
    tmc = pytest.importorskip("torchmetrics.classification")
    pred, target = np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])
    cm = confusion_matrix(pred, target, 3, ignore_index=2)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 1], [0, 0, 0]])
    # IoU: c0 1, c1 1/2, c2 0 -> 1/2
    assert mean_iou(cm) == pytest.approx(0.5)
    tm = tmc.MulticlassJaccardIndex(num_classes=3, ignore_index=2, average="macro")(
        torch.from_numpy(pred), torch.from_numpy(target))
    assert float(tm) == pytest.approx(0.75)                      # (1 + 1/2) / 2


def test_detection_ap_11_point_counts_recall_exactly_at_a_threshold() -> None:
    # 10 GT boxes in one image (npos = 10).  Ranking: 3 TP (recall exactly 3/10, precision 1), 7 FP,
    # 7 TP.  Afterwards precision (3 + m) / (10 + m) rises with m, so for t >= 0.4 the best is 10/17.
    #   t = 0, 0.1, 0.2, 0.3 -> 1;  t = 0.4 .. 1.0 (7 values) -> 10/17  -> (4 + 70/17) / 11 = 138/187
    # (float thresholds as in the devkit: 3 * 0.1 > 0.3 would lose the R = 0.3 point: 131/187.)
    gt_boxes = [[20 * i, 0, 20 * i + 9, 9] for i in range(10)]
    gt = {"A": (gt_boxes, [False] * 10)}
    dets = [("A", 100.0 - k, b) for k, b in enumerate(gt_boxes[:3])]
    dets += [("A", 90.0 - k, [500, 500, 510, 510]) for k in range(7)]
    dets += [("A", 80.0 - k, b) for k, b in enumerate(gt_boxes[3:])]
    assert detection_ap(dets, gt, use_07_metric=True) == pytest.approx(138 / 187, abs=1e-12)
    # area: 0.3 at precision 1, then 0.7 at interpolated 10/17.
    assert detection_ap(dets, gt, use_07_metric=False) == pytest.approx(0.3 + 7 / 17, abs=1e-12)
