"""Tests for the VOC07 SVM protocol (ssl_bench.probe.svm_voc07).

References are independent re-implementations in the test: scikit-learn fits written out by hand
(folds, LinearSVC, normalisation) and a brute-force AP over thresholds.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile

import numpy as np
import pytest
from helpers import brute_force_ap
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

from ssl_bench.probe.svm_voc07 import DEFAULT_COSTS, svm_voc07

SMALL_GRID = [1e-3, 0.1, 10.0]
MID_ITER = 200  # stops some of the 3-cost fits on clusters(seed=3), not all (checked in the test)
# Goyal et al.'s cost grid (fair_self_supervision_benchmark, tools/svm: the costs_list 1e-7..100 in
# decades, to which parse_cost_list appends 0.5**k for k in range(4, 20)), ascending: 26 values.
GOYAL_COSTS = [1e-7, 1e-6, 1.9073486328125e-06, 3.814697265625e-06, 7.62939453125e-06, 1e-5,
               1.52587890625e-05, 3.0517578125e-05, 6.103515625e-05, 1e-4, 0.0001220703125,
               0.000244140625, 0.00048828125, 0.0009765625, 1e-3, 0.001953125, 0.00390625, 0.0078125,
               1e-2, 0.015625, 0.03125, 0.0625, 0.1, 1.0, 10.0, 100.0]


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
    assert res["cost_grid"] == GOYAL_COSTS
    assert res["fits"] == 4 * (3 * 26 + 1)
    grid = np.array(res["cv_ap_grid"])
    assert grid.shape == (4, 26)
    # The chosen cost is the best mean CV AP, the smallest cost among equals.
    for c in range(4):
        k = GOYAL_COSTS.index(res["costs"][c])
        assert res["cv_ap"][c] == grid[c].max() == grid[c, k]
        assert (grid[c, :k] < grid[c, k]).all()
    # Harder data gives lower APs: the metric is not saturated by construction.
    hard = svm_voc07(*clusters(noise=4.0, seed=1), costs=SMALL_GRID, n_jobs=1)
    assert hard["mAP"] < res["mAP"] - 0.1


def test_default_cost_grid_is_goyal_et_al() -> None:
    assert len(GOYAL_COSTS) == 26 and GOYAL_COSTS == sorted(GOYAL_COSTS)
    assert DEFAULT_COSTS == GOYAL_COSTS


def test_parallel_results_are_identical(problem) -> None:
    seq = svm_voc07(*problem, n_jobs=1, return_scores=True)
    par = svm_voc07(*problem, n_jobs=2, return_scores=True)
    assert par["ap"] == seq["ap"] and par["costs"] == seq["costs"]
    assert par["cv_ap_grid"] == seq["cv_ap_grid"]
    assert np.array_equal(par["scores"], seq["scores"])
    # A different seed changes the folds (and therefore something in the CV table).
    other = svm_voc07(*problem, n_jobs=1, seed=1)
    assert other["cv_ap_grid"] != seq["cv_ap_grid"]


def hand_svm(cost: float, max_iter: int = 2000) -> LinearSVC:
    return LinearSVC(C=cost, class_weight={1: 2, -1: 1}, loss="squared_hinge", penalty="l2",
                     intercept_scaling=1.0, dual=True, max_iter=max_iter, random_state=0)


def hand_reference(tx: np.ndarray, ty: np.ndarray, vx: np.ndarray, costs: list[float], max_iter: int = 2000):
    """The protocol redone with scikit-learn directly, per class: (mean fold AP per cost, chosen cost,
    test scores, fits that ran all max_iter iterations, read from the models' n_iter_)."""
    ntx = tx / np.sqrt((tx ** 2).sum(axis=1, keepdims=True))
    nvx = vx / np.sqrt((vx ** 2).sum(axis=1, keepdims=True))
    out = []
    for c in range(ty.shape[1]):
        y = np.where(ty[:, c] == 1, 1, -1)
        cv, stopped = np.zeros(len(costs)), 0
        for tr, va in StratifiedKFold(3, shuffle=True, random_state=0).split(ntx, y):
            for k, cost in enumerate(costs):
                svm = hand_svm(cost, max_iter).fit(ntx[tr], y[tr])
                stopped += int(svm.n_iter_ >= max_iter)
                cv[k] += brute_force_ap(svm.decision_function(ntx[va]), y[va]) / 3
        best = costs[int(np.argmax(cv))]
        svm = hand_svm(best, max_iter).fit(ntx, y)
        out.append((cv, best, svm.decision_function(nvx), stopped + int(svm.n_iter_ >= max_iter)))
    return out


def test_protocol_matches_a_hand_written_reference() -> None:
    """Folds, SVM settings, normalisation, difficult-as-negative, cost choice and test AP, redone
    with scikit-learn directly for a 3-cost grid."""
    tx, ty, vx, vy = clusters(n_train=150, n_test=120, noise=2.0, seed=3)
    res = svm_voc07(tx, ty, vx, vy, costs=SMALL_GRID, n_jobs=1, return_scores=True)
    for c, (cv, best, scores, _) in enumerate(hand_reference(tx, ty, vx, SMALL_GRID)):
        assert res["cv_ap_grid"][c] == pytest.approx(cv.tolist(), abs=1e-9)
        assert res["costs"][c] == best
        assert res["scores"][:, c] == pytest.approx(scores, abs=1e-9)
        assert res["ap"][c] == pytest.approx(brute_force_ap(scores, vy[:, c]), abs=1e-12)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_fits_stopped_at_max_iter_are_counted_per_class() -> None:
    tx, ty, vx, vy = clusters(n_train=150, n_test=120, noise=2.0, seed=3)
    # max_iter=1: every fit uses its one iteration, 3 folds x 3 costs + 1 refit = 10 per class.
    res = svm_voc07(tx, ty, vx, vy, costs=SMALL_GRID, n_jobs=1, max_iter=1)
    assert res["not_converged_per_class"] == [10, 10, 10, 10] and res["not_converged"] == 40
    # A limit that stops only some fits, so the classes differ; serial and parallel agree with the
    # hand-written count.
    expected = [stopped for *_, stopped in hand_reference(tx, ty, vx, SMALL_GRID, max_iter=MID_ITER)]
    assert len(set(expected)) > 1 and 0 < sum(expected) < 40, expected
    for n_jobs in (1, 2):
        res = svm_voc07(tx, ty, vx, vy, costs=SMALL_GRID, n_jobs=n_jobs, max_iter=MID_ITER)
        assert res["not_converged_per_class"] == expected and res["not_converged"] == sum(expected)
    # Converged fits are not counted.
    res = svm_voc07(tx, ty, vx, vy, costs=SMALL_GRID, n_jobs=1)
    assert res["not_converged_per_class"] == [0, 0, 0, 0]


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


def test_shared_copies_fall_back_to_disk_when_dev_shm_is_short(problem, monkeypatch, tmp_path) -> None:
    """/dev/shm reporting 1 MiB free (less than the copies plus margin) sends them to the system temp
    dir with identical results; an explicit shared_dir is used as given, and refused without room."""
    if not os.access("/dev/shm", os.W_OK) or shutil.disk_usage("/dev/shm").free < 64 << 20:
        pytest.skip("needs a writable /dev/shm with room")
    made = []
    real_mkdtemp, real_usage = tempfile.mkdtemp, shutil.disk_usage
    short = {"/dev/shm"}

    def recording_mkdtemp(*a, **kw):
        if kw.get("prefix") == "ssl_bench_svm_":
            made.append(str(kw.get("dir")))
        return real_mkdtemp(*a, **kw)

    def usage(path):
        u = real_usage(path)
        return u._replace(free=1 << 20) if os.fspath(path) in short else u

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    run = functools.partial(svm_voc07, *problem, costs=SMALL_GRID, n_jobs=2, return_scores=True)
    shm = run(shared_dir="/dev/shm")
    monkeypatch.setattr(shutil, "disk_usage", usage)
    fallback = run()
    own = run(shared_dir=tmp_path)
    assert made == ["/dev/shm", tempfile.gettempdir(), str(tmp_path)]
    assert [shm["shared_dir"], fallback["shared_dir"], own["shared_dir"]] == made
    for res in (fallback, own):
        assert res["ap"] == shm["ap"] and res["costs"] == shm["costs"]
        assert res["cv_ap_grid"] == shm["cv_ap_grid"] and np.array_equal(res["scores"], shm["scores"])
    assert not list(tmp_path.iterdir())
    short.add(os.fspath(tmp_path))
    with pytest.raises(ValueError, match=r"shared_dir: .* need \d+ MiB .*has 1 MiB free"):
        run(shared_dir=tmp_path)
    with pytest.raises(ValueError, match="shared_dir: .* is not a writable folder"):
        run(shared_dir=tmp_path / "missing")
    assert len(made) == 3  # both refused before any copy was made


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
