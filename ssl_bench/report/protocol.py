"""Which protocol a number was measured under, and how it deviates from the published one.

A run's settings that the authors' released protocol fixes are gathered in a ``recipe`` (one per
evaluation, chosen by ``protocol=paper|fast``); the record lists every recipe value that differs from
the paper's, so a ``paper`` run with one overridden value is labelled, not silently comparable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import OmegaConf

from ssl_bench.config import CONF_DIR
from ssl_bench.errors import MissingDataError

PAPER = "paper"


def paper_recipe(job: str, evaluation: str) -> dict[str, Any]:
    """The published protocol's recipe of ``evaluation`` in ``job`` (``conf/recipe/<job>/<evaluation>_paper.yaml``),
    resolved, as the reference a run's own recipe is compared with."""
    path = CONF_DIR / "recipe" / job / f"{evaluation}_{PAPER}.yaml"
    if not path.is_file():
        raise MissingDataError(f"no published recipe for {job} {evaluation!r}: expected {path}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def deviations(recipe: Mapping[str, Any], paper: Mapping[str, Any], extra: Sequence[str] = ()) -> list[str]:
    """``key=value`` labels for each of ``paper``'s keys whose value in ``recipe`` differs (missing keys
    count as different), after the free-form labels in ``extra``; in ``paper``'s key order."""
    out = [str(label) for label in extra]
    for key, want in paper.items():
        got = recipe.get(key)
        if got != want:
            out.append(f"{key}={got}")
    return out


def protocol_record(name: str, recipe: Mapping[str, Any], paper: Mapping[str, Any],
                    extra: Sequence[str] = ()) -> dict[str, Any]:
    """The ``protocol`` entry of a results.json: {"name", "recipe", "deviations"} (no deviations = comparable)."""
    return {"name": str(name), "recipe": dict(recipe), "deviations": deviations(recipe, paper, extra)}


def is_comparable(protocol: Mapping[str, Any] | None) -> bool:
    """True when a measured number may sit in the same column as a published one."""
    return bool(protocol) and protocol.get("name") == PAPER and not protocol.get("deviations")
