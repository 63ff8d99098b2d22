"""Tests for the VOC07 SVM protocol (ssl_bench.probe.svm_voc07).

References are independent re-implementations in the test: scikit-learn fits written out by hand
(folds, LinearSVC, normalisation) and a brute-force AP over thresholds.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import brute_force_ap
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

from ssl_bench.probe.svm_voc07 import DEFAULT_COSTS, svm_voc07

SMALL_GRID = [1e-3, 0.1, 10.0]


def clusters(n_train: int = 240, n_test: int = 200, dim: int = 24, n_classes: int = 4,
             noise: float = 1.0, difficult: float = 0.1, seed: int = 0):
    """Multi-label Gaussian cluster features: each image holds 1-2 classes; x = sum of their
    centres + noise; ~10% of the positive labels are "difficult" (0) with a weaker signal."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, dim)) * 2.0

    def split(n: int):
        y = np.full((n, n_classes), -1, dtype=np.int8)
        x = rng.standard_normal((n, dim)) * noise
        for i in range(n):
            for c in rng.choice(n_classes, size=int(rng.integers(1, 3)), replace=False):
                hard = rng.random() < difficult
                y[i, c] = 0 if hard else 1
                x[i] += centres[c] * (0.4 if hard else 1.0)
        return x, y

    return (*split(n_train), *split(n_test))


@pytest.fixture(scope="module")
def problem():
    return clusters()


def test_high_ap_on_separable_clusters_and_costs_from_the_grid(problem) -> None:
    res = svm_voc07(*problem, n_jobs=1)
    assert len(res["ap"]) == 4 and len(res["costs"]) == 4 and len(res["cv_ap"]) == 4
    assert min(res["ap"]) > 0.9, res["ap"]
    assert res["mAP"] == pytest.approx(np.mean(res["ap"]))
    assert all(c in DEFAULT_COSTS for c in res["costs"])
    assert res["fits"] == 4 * 3 * len(DEFAULT_COSTS) + 4
    grid = np.array(res["cv_ap_grid"])
    assert grid.shape == (4, len(DEFAULT_COSTS))
    # The chosen cost is the best mean CV AP, the smallest cost among equals.
    for c in range(4):
        k = DEFAULT_COSTS.index(res["costs"][c])
        assert res["cv_ap"][c] == grid[c].max() == grid[c, k]
        assert (grid[c, :k] < grid[c, k]).all()
    # Harder data gives lower APs: the metric is not saturated by construction.
    hard = svm_voc07(*clusters(noise=4.0, seed=1), costs=SMALL_GRID, n_jobs=1)
    assert hard["mAP"] < res["mAP"] - 0.1


def test_parallel_results_are_identical(problem) -> None:
    seq = svm_voc07(*problem, n_jobs=1, return_scores=True)
    par = svm_voc07(*problem, n_jobs=2, return_scores=True)
    assert par["ap"] == seq["ap"] and par["costs"] == seq["costs"]
    assert par["cv_ap_grid"] == seq["cv_ap_grid"]
    assert np.array_equal(par["scores"], seq["scores"])
    # A different seed changes the folds (and therefore something in the CV table).
    other = svm_voc07(*problem, n_jobs=1, seed=1)
    assert other["cv_ap_grid"] != seq["cv_ap_grid"]


def test_protocol_matches_a_hand_written_reference() -> None:
    """Folds, SVM settings, normalisation, difficult-as-negative, cost choice and test AP, redone
    with scikit-learn directly for a 3-cost grid."""
    tx, ty, vx, vy = clusters(n_train=150, n_test=120, noise=2.0, seed=3)
    res = svm_voc07(tx, ty, vx, vy, costs=SMALL_GRID, n_jobs=1, return_scores=True)
    ntx = tx / np.sqrt((tx ** 2).sum(axis=1, keepdims=True))
    nvx = vx / np.sqrt((vx ** 2).sum(axis=1, keepdims=True))
    for c in range(ty.shape[1]):
        y = np.where(ty[:, c] == 1, 1, -1)
        cv = np.zeros(len(SMALL_GRID))
        for tr, va in StratifiedKFold(3, shuffle=True, random_state=0).split(ntx, y):
            for k, cost in enumerate(SMALL_GRID):
                svm = LinearSVC(C=cost, class_weight={1: 2, -1: 1}, loss="squared_hinge",
                                penalty="l2", intercept_scaling=1.0, dual=True, max_iter=2000,
                                random_state=0).fit(ntx[tr], y[tr])
                cv[k] += brute_force_ap(svm.decision_function(ntx[va]), y[va]) / 3
        assert res["cv_ap_grid"][c] == pytest.approx(cv.tolist(), abs=1e-9)
        best = SMALL_GRID[int(np.argmax(cv))]
        assert res["costs"][c] == best
        svm = LinearSVC(C=best, class_weight={1: 2, -1: 1}, dual=True, max_iter=2000,
                        random_state=0).fit(ntx, y)
        scores = svm.decision_function(nvx)
        assert res["scores"][:, c] == pytest.approx(scores, abs=1e-9)
        assert res["ap"][c] == pytest.approx(brute_force_ap(scores, vy[:, c]), abs=1e-12)


def test_test_difficult_images_do_not_affect_ap(problem) -> None:
    tx, ty, vx, vy = problem
    c = 0
    i = int(np.flatnonzero(vy[:, c] == 0)[0])  # a difficult test image of class 0
    base = svm_voc07(tx, ty, vx, vy, costs=SMALL_GRID, n_jobs=1, return_scores=True)
    for fill in (-50.0, 50.0):
        vx2 = vx.copy()
        vx2[i] = base_direction(tx, ty, c) * fill   # its score swings to either extreme
        res = svm_voc07(tx, ty, vx2, vy, costs=SMALL_GRID, n_jobs=1, return_scores=True)
        assert res["scores"][i, c] != pytest.approx(base["scores"][i, c], abs=0.1)
        assert res["ap"][c] == base["ap"][c]
    # Control: the same image labelled absent (-1) with a top score lowers the AP, so the check
    # above can fail.
    vy2 = vy.copy()
    vy2[i, c] = -1
    vx2 = vx.copy()
    vx2[i] = base_direction(tx, ty, c) * 50.0
    res = svm_voc07(tx, ty, vx2, vy2, costs=SMALL_GRID, n_jobs=1)
    assert res["ap"][c] < base["ap"][c]


def base_direction(tx: np.ndarray, ty: np.ndarray, c: int) -> np.ndarray:
    """Mean positive minus mean negative training feature of class c."""
    return tx[ty[:, c] == 1].mean(axis=0) - tx[ty[:, c] == -1].mean(axis=0)


def test_training_difficult_rows_are_negatives() -> None:
    # Tiny case: class 0 has 12 training rows labelled difficult, all sitting on the positive
    # cluster.  Used as negatives they pull the SVM; dropped they would not.
    tx, ty, vx, vy = clusters(n_train=120, n_test=80, difficult=0.0, seed=5)
    rng = np.random.default_rng(0)
    pos = np.flatnonzero(ty[:, 0] == 1)
    hard = rng.choice(pos, size=12, replace=False)
    ty = ty.copy()
    ty[hard, 0] = 0
    res = svm_voc07(tx, ty, vx, vy, costs=[1.0], n_jobs=1, return_scores=True)
    ntx = tx / np.linalg.norm(tx, axis=1, keepdims=True)
    nvx = vx / np.linalg.norm(vx, axis=1, keepdims=True)

    def fit_scores(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        svm = LinearSVC(C=1.0, class_weight={1: 2, -1: 1}, dual=True, max_iter=2000, random_state=0)
        return svm.fit(x, y).decision_function(nvx)

    as_negatives = fit_scores(ntx, np.where(ty[:, 0] == 1, 1, -1))
    keep = ty[:, 0] != 0
    dropped = fit_scores(ntx[keep], np.where(ty[keep, 0] == 1, 1, -1))
    as_positives = fit_scores(ntx, np.where(ty[:, 0] >= 0, 1, -1))
    assert res["scores"][:, 0] == pytest.approx(as_negatives, abs=1e-9)
    assert np.abs(res["scores"][:, 0] - dropped).max() > 1e-3
    assert np.abs(res["scores"][:, 0] - as_positives).max() > 1e-3


def test_input_validation(problem) -> None:
    tx, ty, vx, vy = problem
    with pytest.raises(ValueError, match="rows"):
        svm_voc07(tx[:-1], ty, vx, vy)
    with pytest.raises(ValueError, match="feature dimensions"):
        svm_voc07(tx, ty, vx[:, :-1], vy)
    with pytest.raises(ValueError, match="classes"):
        svm_voc07(tx, ty, vx, vy[:, :-1])
    with pytest.raises(ValueError, match="labels must be"):
        svm_voc07(tx, ty * 2, vx, vy)
    with pytest.raises(ValueError, match="NaN"):
        bad = tx.copy()
        bad[0, 0] = np.nan
        svm_voc07(bad, ty, vx, vy)
    with pytest.raises(ValueError, match="costs"):
        svm_voc07(tx, ty, vx, vy, costs=[0.0, 1.0])
    # No training positives for class 4: the message names it (VOC names with 20 classes).
    ty20 = np.full((tx.shape[0], 20), -1, dtype=np.int8)
    ty20[:, :4] = ty
    vy20 = np.full((vx.shape[0], 20), -1, dtype=np.int8)
    vy20[:, :4] = vy
    with pytest.raises(ValueError, match="'bottle'.*0 training positives"):
        svm_voc07(tx, ty20, vx, vy20)
    ty_only_difficult = ty.copy()
    ty_only_difficult[:, 2] = np.where(ty[:, 2] == 1, 0, ty[:, 2])  # difficult ones are not positives
    with pytest.raises(ValueError, match="'class 2'"):
        svm_voc07(tx, ty_only_difficult, vx, vy)
    vy_none = vy.copy()
    vy_none[:, 3] = -1
    with pytest.raises(ValueError, match="'class 3': no positive test images"):
        svm_voc07(tx, ty, vx, vy_none)


def test_worker_errors_propagate_and_leave_no_files(problem, tmp_path) -> None:
    """An exception inside a worker (here scikit-learn rejecting tol < 0) reaches the caller, and
    the shared-memory copies of the features are removed."""
    import glob
    import tempfile

    def leftovers() -> set[str]:
        return set(glob.glob("/dev/shm/ssl_bench_svm_*")) | set(
            glob.glob(os.path.join(tempfile.gettempdir(), "ssl_bench_svm_*")))

    before = leftovers()
    with pytest.raises(ValueError, match="tol"):
        svm_voc07(*problem, costs=SMALL_GRID, n_jobs=2, tol=-1.0)
    assert leftovers() == before
    with pytest.raises(ValueError, match="max_iter"):
        svm_voc07(*problem, max_iter=0)


def test_csr_input_gives_bit_identical_models() -> None:
    """The protocol hands liblinear CSR matrices (faster); liblinear must see the same problem as
    from the dense array, so the models are equal bit for bit, with and without exact zeros."""
    import scipy.sparse as sp

    from ssl_bench.probe.svm_voc07 import l2_normalise, make_svm
    tx, ty, _, _ = clusters(n_train=200, seed=7)
    y = np.where(ty[:, 1] == 1, 1, -1)
    for x in (l2_normalise(tx), l2_normalise(np.maximum(tx, 0.0))):   # dense; ~half zeros
        for cost in (1e-4, 0.1, 10.0):
            dense = make_svm(cost).fit(x, y)
            csr = make_svm(cost).fit(sp.csr_matrix(x), y)
            assert np.array_equal(dense.coef_, csr.coef_) and np.array_equal(dense.intercept_, csr.intercept_)


def test_default_class_names_are_the_voc_classes() -> None:
    from ssl_bench.data.voc import VOC_CLASSES
    from ssl_bench.probe.svm_voc07 import _VOC_CLASSES
    assert _VOC_CLASSES == VOC_CLASSES
