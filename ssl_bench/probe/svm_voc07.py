"""The VOC2007 linear-SVM transfer protocol of Goyal et al. 2019 (docs/protocols.md §3.3), run in parallel.

Protocol, per layer of features (one call of ``svm_voc07``):

1. Rows of the train and test features are L2-normalised.
2. For each class c, the training target is +1 where ``train_y[:, c] == 1`` and -1 otherwise:
   "difficult" images (label 0) are *negatives* in training, as in Goyal et al.'s code.
3. For each cost in the grid, a ``LinearSVC(C=cost, class_weight={1: 2, -1: 1},
   loss="squared_hinge", penalty="l2", intercept_scaling=1.0, dual=True)`` is fitted on two folds
   and scored on the third (3-fold stratified split of that class's targets); the cost with the
   highest mean fold AP (area under the interpolated PR curve) is chosen, the smallest cost on a tie.
4. The class's final SVM is refitted on all training rows with the chosen cost and scores the test
   set; test AP (area under the interpolated PR curve) excludes images whose label is 0.

Differences from the reference code (fair_self_supervision_benchmark / VISSL), on purpose:

* The cross-validation score is our interpolated AP (``mode="area"``), as in the test metric; the
  reference passes ``scoring="average_precision"`` to scikit-learn's ``cross_val_score``, which is the
  non-interpolated AP.  The chosen cost can therefore differ on near-ties.
* The folds are a *shuffled* ``StratifiedKFold`` seeded by ``seed`` (the reference uses the unshuffled
  split, which depends on the file order); each class has its own split, as in the reference.
* Rows are divided by their exact norm (the reference divides by ``norm + 1e-5``).

Parallelism and determinism
---------------------------
The work is cut into ``classes x folds`` cross-validation units (each fits every cost on one fold)
and one refit unit per class.  With ``n_jobs > 1`` they run on joblib's reusable **loky** process
pool: all CV units are queued at once and a class's refit is queued as soon as its folds are in (no
barrier between the phases), and the normalised features travel once, as .npy files that the workers
map read-only: in ``shared_dir`` when given, else in /dev/shm when it has room for them, else in the
system temp dir (containers often give /dev/shm only 64 MB, while VOC07 conv features take ~0.8 GB;
a file that does not fit there fails part-way).  Threads are not an option even though liblinear
releases the GIL: scikit-learn's liblinear draws its coordinate order from one *process-global*
Mersenne twister (``sklearn/svm/src/newrand/newrand.h``), seeded per fit before the GIL is released,
so concurrent fits in threads would interleave their random streams and give run-to-run different
models.  In separate processes every fit reseeds the generator from ``random_state`` and sees
exactly the data it sees when run alone, and each unit runs with BLAS limited to one thread (in the
sequential path too), so ``n_jobs=1`` and ``n_jobs=k`` give bit-identical scores, chosen costs and
APs.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, Union

import numpy as np
import scipy.sparse as sp
from joblib import cpu_count
from joblib.externals.loky import get_reusable_executor
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from ssl_bench.errors import ConfigError, DataError
from ssl_bench.metrics import average_precision

__all__ = ["DEFAULT_COSTS", "CLASS_WEIGHT", "l2_normalise", "make_svm", "svm_voc07"]

# Goyal et al.'s grid: 1e-7 .. 100 in decades plus 0.5^k for k = 4..19, ascending.
DEFAULT_COSTS: list[float] = sorted([1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]
                                    + [0.5 ** k for k in range(4, 20)])
CLASS_WEIGHT: dict[int, float] = {1: 2, -1: 1}
# ssl_bench.data.voc.VOC_CLASSES, repeated here because that module imports torch (~1.5 s), which
# neither this module's callers nor its worker processes need; a test keeps the two equal.
_VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
                "train", "tvmonitor")
DEFAULT_MAX_ITER = 2000  # as in the reference code
DEFAULT_TOL = 1e-4
# A folder holds the shared copies only with this much free beyond their size: /dev/shm is shared
# with other programs and with loky's own semaphores and memmaps, so it is not filled to the brim.
_ROOM_FACTOR, _ROOM_SLACK = 1.25, 8 << 20


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64 N x D; all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, np.finfo(np.float64).tiny)


def make_svm(cost: float, seed: int = 0, max_iter: int = DEFAULT_MAX_ITER,
             tol: float = DEFAULT_TOL) -> LinearSVC:
    """The protocol's per-class classifier (targets must be +1 / -1)."""
    return LinearSVC(C=cost, class_weight=CLASS_WEIGHT, loss="squared_hinge", penalty="l2",
                     intercept_scaling=1.0, dual=True, max_iter=max_iter, tol=tol,
                     random_state=seed)


# glibc mallopt parameters and their initial values (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_GLIBC_DEFAULTS = ((_M_TRIM_THRESHOLD, 128 * 1024), (_M_MMAP_THRESHOLD, 128 * 1024), (_M_MMAP_MAX, 65536))


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextlib.contextmanager
def _reuse_freed_memory() -> Iterator[None]:
    """Let glibc keep and reuse freed memory while fitting.

    liblinear copies the training matrix into its own (index, value) array on every fit -- 16 bytes
    per non-zero, up to ~50 MB for 1,667 x 2,000 -- and glibc serves such blocks with a fresh mmap that the
    kernel must zero page by page, then unmaps them on free.  That page-fault work was ~25% of each
    fit's time (measured: 26 fits 2.17 s -> 1.56 s, system time 0.56 s -> 0.01 s).  Serving them
    from the heap and not trimming it makes later fits reuse the same pages.  On exit the glibc
    default values are restored (its dynamic mmap threshold stays off, as after any mallopt call)
    and the retained memory is handed back with malloc_trim.  No-op off glibc/Linux.
    """
    libc = _libc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_MAX, 0)                  # no mmap for large blocks: use the heap
    libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)    # and do not give freed heap back right away
    try:
        yield
    finally:
        for param, value in _GLIBC_DEFAULTS:
            libc.mallopt(param, value)
        libc.malloc_trim(0)


def _for_liblinear(x: np.ndarray) -> sp.csr_matrix:
    """The training rows as CSR (float64).

    liblinear stores only the non-zeros either way, but from a dense array scikit-learn counts and
    copies them out of the full matrix on *every* fit; converting once per unit and passing CSR
    gives liblinear the same problem (same entries, same order: bit-identical models, checked in
    the tests) at ~40% less time per fit on ReLU features with half zeros, and no loss when dense.
    """
    return sp.csr_matrix(np.asarray(x, dtype=np.float64))


def _fit(x: np.ndarray | sp.csr_matrix, y: np.ndarray, cost: float, seed: int, max_iter: int,
         tol: float) -> tuple[np.ndarray, float, bool]:
    """Fit one SVM; returns (weights D, bias, converged)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        svm = make_svm(cost, seed, max_iter, tol).fit(x, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return svm.coef_[0].copy(), float(svm.intercept_[0]), converged


# A feature matrix handed to a unit: the array itself (sequential path) or the path of an .npy file
# that the worker maps read-only (parallel path: one copy in shared memory for all workers).
ArrayRef = Union[np.ndarray, str]


def _as_array(ref: ArrayRef) -> np.ndarray:
    return np.load(ref, mmap_mode="r") if isinstance(ref, str) else ref


def _noop() -> None:
    return None


def _cv_unit(x: ArrayRef, y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
             costs: Sequence[float], seed: int, max_iter: int, tol: float
             ) -> tuple[np.ndarray, int, float]:
    """All costs on one (class, fold).

    x: float64 N x D (or its .npy path); y: +1/-1 N for this class.
    Returns (fold AP per cost float64 K, number of fits that hit max_iter, CPU seconds used).
    """
    t0 = time.process_time()
    x = _as_array(x)
    with threadpool_limits(limits=1), _reuse_freed_memory():
        xt, yt = _for_liblinear(x[train_idx]), y[train_idx]
        xv, yv = np.ascontiguousarray(x[val_idx]), y[val_idx]
        aps = np.empty(len(costs), dtype=np.float64)
        bad = 0
        for k, cost in enumerate(costs):
            w, b, ok = _fit(xt, yt, cost, seed, max_iter, tol)
            bad += not ok
            aps[k] = average_precision(xv @ w + b, yv, mode="area")
    return aps, bad, time.process_time() - t0


def _final_unit(x: ArrayRef, y: np.ndarray, x_test: ArrayRef, cost: float, seed: int,
                max_iter: int, tol: float) -> tuple[np.ndarray, int, float]:
    """Refit one class on all training rows.

    Returns (test scores float64 M, 1 if the fit hit max_iter else 0, CPU seconds used).
    """
    t0 = time.process_time()
    x, x_test = _as_array(x), _as_array(x_test)
    with threadpool_limits(limits=1), _reuse_freed_memory():
        w, b, ok = _fit(_for_liblinear(x), y, cost, seed, max_iter, tol)
        scores = np.asarray(x_test) @ w + b
    return scores, int(not ok), time.process_time() - t0


def _check_labels(y: Any, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 2:
        raise ValueError(f"{name}: expected an N x C label matrix, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.number) or not np.isin(y, (-1, 0, 1)).all():
        raise ValueError(f"{name}: labels must be 1 (present), 0 (difficult) or -1 (absent)")
    return y.astype(np.int8)


def _check_features(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty N x D feature matrix, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name}: expected numeric features, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: features contain NaN or inf")
    return x


def svm_voc07(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
              costs: Sequence[float] = DEFAULT_COSTS, folds: int = 3, n_jobs: int = 2, seed: int = 0,
              *, max_iter: int = DEFAULT_MAX_ITER, tol: float = DEFAULT_TOL,
              class_names: Sequence[str] | None = None, return_scores: bool = False,
              shared_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run the VOC07 SVM protocol on one layer's features (see the module docstring).

    train_x: N x D features; train_y: N x C labels in {1, 0, -1} (devkit convention, e.g. from
        ``ssl_bench.data.voc.read_classification``; 0 = difficult -> negative in training).
    test_x: M x D; test_y: M x C (0 = difficult -> excluded from the test AP).
    costs: the cost grid (sorted ascending here; duplicates removed).  folds: CV folds (>= 2).
    n_jobs: worker processes (1 = the reference way: every fit one after the other, in-process;
        -1 = all cores).  Results do not depend on it.
    seed: seeds the fold split and every LinearSVC (``random_state``).
    max_iter, tol: LinearSVC's (the reference's 2000 and 1e-4); an error scikit-learn raises in a
        worker is re-raised here.
    class_names: C names for messages and the result (default: VOC_CLASSES when C == 20).
    return_scores: add "scores", the final SVMs' test scores (float64 M x C).
    shared_dir: the folder where, with n_jobs > 1, the normalised features are written once for
        the workers (float64, (N + M) x D x 8 bytes); None = /dev/shm when it has room, else the
        system temp dir.  Its free space is checked first; a given folder without room is an error.

    Returns a dict:
        "ap": C test APs, "mAP": their mean (interpolated area, the protocol's metric);
        "ap_voc07", "mAP_voc07": the same scores under the VOC2007 11-point AP;
        "costs": chosen cost per class; "cv_ap": best mean CV AP per class;
        "cv_ap_grid": C x K mean CV AP per cost; "cost_grid": the K costs;
        "class_names", "folds", "seed", "n_jobs", "fits" (number of SVMs trained),
        "not_converged" (fits that stopped at max_iter), "not_converged_per_class" (the same per
        class, C counts of at most folds x K + 1), "shared_dir" (the folder that held the workers'
        copies; None when n_jobs == 1), "seconds" (wall time of the call),
        "fit_cpu_seconds" (CPU time of the fitting units summed over processes: compare it
        between n_jobs values to see parallel overhead apart from other programs' load).
    Raises ValueError on shape mismatches, labels outside {1, 0, -1}, non-finite features, a class
    with too few training positives / negatives for the folds or no test positives (naming it), or
    no room for the shared copies.
    """
    t0 = time.perf_counter()
    train_x, train_y, test_x, test_y = _check_data(train_x, train_y, test_x, test_y)
    names = _class_names(class_names, train_y.shape[1])
    grid = _check_settings(costs, folds, n_jobs, max_iter)
    folds, n_jobs, seed = int(folds), int(n_jobs), int(seed)
    _check_classes(train_y, test_y, names, folds)

    n_workers = cpu_count() if n_jobs == -1 else n_jobs
    executor, warm, folder = None, [], None
    if n_workers > 1:
        folder = _shared_folder(shared_dir, (train_x.shape[0] + test_x.shape[0]) * train_x.shape[1] * 8)
        # Start the workers now: they spawn and import scikit-learn while this process normalises.
        executor = get_reusable_executor(max_workers=n_workers)
        warm = [executor.submit(_noop) for _ in range(n_workers)]

    run = _Run(l2_normalise(train_x), l2_normalise(test_x), train_y, grid, folds, seed, max_iter, tol)
    if executor is None:
        _run_serial(run)
    else:
        _run_parallel(run, executor, warm, folder)
    return _result(run, test_y, names, seed, n_jobs, t0, return_scores) | {"shared_dir": folder}


def _check_data(train_x: Any, train_y: Any, test_x: Any, test_y: Any
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four arrays, checked one by one and against each other."""
    train_x = _check_features(train_x, "train_x")
    test_x = _check_features(test_x, "test_x")
    train_y = _check_labels(train_y, "train_y")
    test_y = _check_labels(test_y, "test_y")
    if train_x.shape[0] != train_y.shape[0]:
        raise ValueError(f"train_x has {train_x.shape[0]} rows but train_y has {train_y.shape[0]}")
    if test_x.shape[0] != test_y.shape[0]:
        raise ValueError(f"test_x has {test_x.shape[0]} rows but test_y has {test_y.shape[0]}")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_x has {train_x.shape[1]} feature dimensions but test_x has "
                         f"{test_x.shape[1]}")
    if train_y.shape[1] != test_y.shape[1]:
        raise ValueError(f"train_y has {train_y.shape[1]} classes but test_y has {test_y.shape[1]}")
    return train_x, train_y, test_x, test_y


def _class_names(class_names: Sequence[str] | None, n_classes: int) -> list[str]:
    if class_names is None:
        if n_classes == 20:
            class_names = _VOC_CLASSES
        else:
            class_names = [f"class {c}" for c in range(n_classes)]
    names = [str(n) for n in class_names]
    if len(names) != n_classes:
        raise ValueError(f"class_names: expected {n_classes} names, got {len(names)}")
    return names


def _check_settings(costs: Sequence[float], folds: Any, n_jobs: Any, max_iter: Any) -> list[float]:
    """Validate the scalar settings; returns the cost grid (sorted, without duplicates)."""
    grid = sorted({float(c) for c in costs})
    if not grid or not all(math.isfinite(c) and c > 0 for c in grid):
        raise ConfigError(f"costs: expected a non-empty list of positive finite numbers, got {list(costs)}")
    if not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ConfigError(f"folds: expected an integer >= 2, got {folds!r}")
    if not isinstance(n_jobs, (int, np.integer)) or not (n_jobs >= 1 or n_jobs == -1):
        raise ConfigError(f"n_jobs: expected a positive integer or -1, got {n_jobs!r}")
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ConfigError(f"max_iter: expected a positive integer, got {max_iter!r}")
    return grid


def _check_classes(train_y: np.ndarray, test_y: np.ndarray, names: list[str], folds: int) -> None:
    """Every class needs ``folds`` training positives and negatives, and a test positive."""
    for c, name in enumerate(names):
        n_pos = int((train_y[:, c] > 0).sum())
        n_neg = train_y.shape[0] - n_pos
        if n_pos < folds or n_neg < folds:
            raise DataError(f"class {name!r}: {n_pos} training positives and {n_neg} negatives; "
                            f"{folds}-fold cross-validation needs at least {folds} of each")
        if not (test_y[:, c] > 0).any():
            raise DataError(f"class {name!r}: no positive test images (AP is undefined)")


class _Run:
    """One call's shared inputs and the results its units add, in whatever order they finish.

    Each unit is a pure function of the arguments built here, so the order in which the results
    arrive cannot change them.
    """

    def __init__(self, x: np.ndarray, xt: np.ndarray, train_y: np.ndarray, grid: list[float], folds: int,
                 seed: int, max_iter: int, tol: float) -> None:
        self.x, self.xt, self.grid, self.folds = x, xt, grid, folds
        self.fit_args = (seed, max_iter, tol)
        self.n_classes = train_y.shape[1]
        self.targets = np.where(train_y > 0, 1, -1).astype(np.float64)  # difficult (0) -> negative
        # Fold split per class, fixed before any fitting so it cannot depend on the schedule.
        self.splits = [list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, self.targets[:, c]))
                       for c in range(self.n_classes)]
        self.fold_aps: list[list[Any]] = [[None] * folds for _ in range(self.n_classes)]  # AP per cost
        self.folds_left = [folds] * self.n_classes
        self.cv_aps = np.empty((self.n_classes, len(grid)), dtype=np.float64)
        self.chosen: list[float] = [0.0] * self.n_classes
        self.best: list[float] = [0.0] * self.n_classes
        self.scores = np.empty((xt.shape[0], self.n_classes), dtype=np.float64)
        self.not_converged = [0] * self.n_classes  # fits that stopped at max_iter, per class
        self.cpu = 0.0

    def cv_args(self, c: int, f: int, x: ArrayRef) -> tuple[Any, ...]:
        tr, va = self.splits[c][f]
        return (x, self.targets[:, c], tr, va, self.grid, *self.fit_args)

    def final_args(self, c: int, x: ArrayRef, xt: ArrayRef) -> tuple[Any, ...]:
        return (x, self.targets[:, c], xt, self.chosen[c], *self.fit_args)

    def add_cv(self, c: int, f: int, aps: np.ndarray, bad: int, cpu: float) -> bool:
        """Record one fold; once the class's last fold is in, choose its cost and return True."""
        self.fold_aps[c][f] = aps
        self.not_converged[c] += bad
        self.cpu += cpu
        self.folds_left[c] -= 1
        if self.folds_left[c]:
            return False
        self.cv_aps[c], self.chosen[c], self.best[c] = _choose(np.stack(self.fold_aps[c]), self.grid)
        return True

    def add_final(self, c: int, scores: np.ndarray, bad: int, cpu: float) -> None:
        self.scores[:, c] = scores
        self.not_converged[c] += bad
        self.cpu += cpu


def _run_serial(run: _Run) -> None:
    """The reference schedule: every fit in this process, one after the other."""
    for c in range(run.n_classes):
        for f in range(run.folds):
            run.add_cv(c, f, *_cv_unit(*run.cv_args(c, f, run.x)))
        run.add_final(c, *_final_unit(*run.final_args(c, run.x, run.xt)))


def _shared_folder(shared_dir: str | os.PathLike | None, nbytes: int) -> str:
    """Where the workers' copies of ``nbytes`` of features go (see ``svm_voc07``'s shared_dir).

    Checked before any fitting: a tmpfs that runs out of room fails the write only after the pool
    has started, and a short-of-room /dev/shm is the usual case in containers.
    """
    if shared_dir is not None:
        folder = os.fspath(shared_dir)
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise ConfigError(f"shared_dir: {folder} is not a writable folder")
        candidates = [folder]
    else:
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        candidates = [shm] * (shm is not None) + [tempfile.gettempdir()]
    needed = int(nbytes * _ROOM_FACTOR) + _ROOM_SLACK
    free = {}
    for folder in candidates:
        free[folder] = shutil.disk_usage(folder).free
        if free[folder] >= needed:
            return folder
    have = ", ".join(f"{f} has {n / 2**20:.0f} MiB free" for f, n in free.items())
    raise ConfigError(f"shared_dir: the features' copies for the SVM workers need {needed / 2**20:.0f} MiB "
                      f"with margin; {have}. Give shared_dir a folder with room (or use n_jobs=1)")


@contextlib.contextmanager
def _shared_copies(x: np.ndarray, xt: np.ndarray, parent: str) -> Iterator[tuple[str, str]]:
    """The train and test features as .npy files in a new folder under ``parent``, removed on exit."""
    folder = tempfile.mkdtemp(prefix="ssl_bench_svm_", dir=parent)
    try:
        x_ref, xt_ref = os.path.join(folder, "train.npy"), os.path.join(folder, "test.npy")
        np.save(x_ref, x)
        np.save(xt_ref, xt)
        yield x_ref, xt_ref
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_parallel(run: _Run, executor: Any, warm: list[Future], parent: str) -> None:
    """Dynamic schedule without a barrier on the worker pool.

    All (class, fold) units are queued at once, and a class's refit is queued as soon as its last
    fold is in, so no worker idles between the phases.  The features go to the workers once.
    """
    pending: dict[Future, tuple[str, int, int]] = {}
    with _shared_copies(run.x, run.xt, parent) as (x_ref, xt_ref):
        try:
            for c in range(run.n_classes):
                for f in range(run.folds):
                    pending[executor.submit(_cv_unit, *run.cv_args(c, f, x_ref))] = ("cv", c, f)
            wait(warm)
            while pending:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    kind, c, f = pending.pop(fut)
                    result = fut.result()  # re-raises a worker's exception here
                    if kind == "final":
                        run.add_final(c, *result)
                    elif run.add_cv(c, f, *result):
                        fut = executor.submit(_final_unit, *run.final_args(c, x_ref, xt_ref))
                        pending[fut] = ("final", c, -1)
        finally:
            for fut in pending:
                fut.cancel()


def _result(run: _Run, test_y: np.ndarray, names: list[str], seed: int, n_jobs: int, t0: float,
            return_scores: bool) -> dict[str, Any]:
    """The dict ``svm_voc07`` returns (test APs from the final scores, plus the run's records)."""
    scores, n_classes = run.scores, run.n_classes
    ap = [average_precision(scores[:, c], test_y[:, c], "area", ignore_zero=True)
          for c in range(n_classes)]
    ap07 = [average_precision(scores[:, c], test_y[:, c], "voc07", ignore_zero=True)
            for c in range(n_classes)]
    out: dict[str, Any] = {
        "ap": ap, "mAP": float(np.mean(ap)),
        "ap_voc07": ap07, "mAP_voc07": float(np.mean(ap07)),
        "costs": run.chosen, "cv_ap": run.best,
        "cv_ap_grid": run.cv_aps.tolist(), "cost_grid": run.grid,
        "class_names": names, "folds": run.folds, "seed": seed, "n_jobs": n_jobs,
        "fits": n_classes * (run.folds * len(run.grid) + 1), "not_converged": sum(run.not_converged),
        "not_converged_per_class": list(run.not_converged),
        "seconds": time.perf_counter() - t0, "fit_cpu_seconds": run.cpu,
    }
    if return_scores:
        out["scores"] = scores
    return out


def _choose(fold_aps: np.ndarray, grid: list[float]) -> tuple[np.ndarray, float, float]:
    """One class's cost choice from its fold APs (folds x K): (mean AP per cost, chosen cost,
    its mean AP).  argmax takes the first maximum, i.e. the smallest cost on a tie."""
    mean = fold_aps.mean(axis=0)
    k = int(np.argmax(mean))
    return mean, grid[k], float(mean[k])
