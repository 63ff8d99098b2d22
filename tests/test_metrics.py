"""Tests for ssl_bench.evaluation.metrics: hand-worked APs, a brute-force reference, and scikit-learn.

Notation in the comments: a ranking is the label sequence sorted by decreasing score, "+" a
positive and "-" a negative; after the k-th item, precision P = tp / k and recall R = tp / n_pos.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from ssl_bench.evaluation.metrics import average_precision, mean_average_precision


def brute_force_ap(scores: np.ndarray, labels: np.ndarray, mode: str) -> float:
    """The definitions, spelled out with loops over thresholds (O(n^2), no shared code).

    The PR curve has one point per distinct score t: the items with score >= t are predicted
    positive.  Interpolated precision at recall r = max precision over points with recall >= r.
    """
    labels = np.asarray(labels)
    if (labels == -1).any():                      # devkit convention: 0 = ignored
        keep = labels != 0
        scores, labels = np.asarray(scores)[keep], labels[keep]
    pos = labels > 0
    n_pos = pos.sum()
    points = []                                   # (recall, precision)
    for t in sorted(set(scores.tolist()), reverse=True):
        sel = scores >= t
        points.append((pos[sel].sum() / n_pos, pos[sel].sum() / sel.sum()))
    if mode == "voc07":
        total = 0.0
        for k in range(11):
            ps = [p for r, p in points if r >= k / 10]
            total += max(ps) if ps else 0.0
        return total / 11
    ap, prev_r = 0.0, 0.0
    for r, _ in points:
        ap += (r - prev_r) * max(p for r2, p in points if r2 >= r)
        prev_r = r
    return ap


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
