"""The study's statistics: rater screening on sentinels, "% labelled real" and its bootstrap SE."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BOOTSTRAP_DRAWS", "BOOTSTRAP_SEED", "RaterTally", "bootstrap_se", "tally", "screen", "summarize"]

BOOTSTRAP_DRAWS = 1000
BOOTSTRAP_SEED = 0


@dataclass
class RaterTally:
    """One rater's counts: sentinels answered / right, method trials / colorization labelled real."""

    sentinels: int = 0
    sentinels_right: int = 0
    trials: int = 0
    labelled_real: int = 0


def bootstrap_se(per_rater: Sequence[tuple[int, int]], draws: int = BOOTSTRAP_DRAWS,
                 seed: int = BOOTSTRAP_SEED) -> float:
    """SE (percent) of the pooled rate sum(k)/sum(n) of (k, n) per rater, raters resampled with replacement."""
    if len(per_rater) < 2:
        return 0.0
    k = np.array([a for a, _ in per_rater], dtype=np.float64)
    n = np.array([b for _, b in per_rater], dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(k), size=(draws, len(k)))
    rates = 100.0 * k[idx].sum(1) / n[idx].sum(1)
    return float(rates.std(ddof=1))


def tally(rows: Sequence[dict[str, Any]]) -> dict[str, RaterTally]:
    """Counts per rater of answer rows (dicts with the answers table's columns)."""
    raters: dict[str, RaterTally] = {}
    for r in rows:
        t = raters.setdefault(r["rater"], RaterTally())
        if r["is_sentinel"]:
            t.sentinels += 1
            t.sentinels_right += int(r["correct"])
        else:
            t.trials += 1
            t.labelled_real += int(not r["correct"])  # chose the colorization as the real one
    return raters


def screen(raters: dict[str, RaterTally], min_sentinel_accuracy: float) -> tuple[list[str], dict[str, str]]:
    """(kept raters, sorted; excluded rater -> reason)."""
    kept, excluded = [], {}
    for name, t in sorted(raters.items()):
        if t.sentinels == 0 and min_sentinel_accuracy > 0:
            excluded[name] = "answered no sentinel"
        elif t.sentinels and t.sentinels_right / t.sentinels < min_sentinel_accuracy:
            excluded[name] = f"sentinel accuracy {t.sentinels_right}/{t.sentinels}"
        elif t.trials == 0:
            excluded[name] = "answered no method trial"
        else:
            kept.append(name)
    return kept, excluded


def summarize(rows: Sequence[dict[str, Any]], min_sentinel_accuracy: float = 1.0) -> dict[str, Any]:
    """Rater screening and "% labelled real" of the answer rows (dicts with the answers columns)."""
    raters = tally(rows)
    kept, excluded = screen(raters, min_sentinel_accuracy)
    per = [(raters[n].labelled_real, raters[n].trials) for n in kept]
    trials = sum(n for _, n in per)
    sent = sum(raters[n].sentinels for n in kept)
    return {
        "amt_real": 100.0 * sum(k for k, _ in per) / trials if trials else None,
        "amt_real_se": bootstrap_se(per) if trials else None,
        "raters_kept": kept, "raters_excluded": excluded, "trials": trials,
        "sentinel_trials": sent,
        "sentinel_accuracy": 100.0 * sum(raters[n].sentinels_right for n in kept) / sent if sent else None,
    }
