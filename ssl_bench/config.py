"""The one place that finds ``conf/`` and composes a config from it.

``conf/`` sits beside the package in the repository (the package is installed in editable mode,
``editable_mode=compat``), so configs and experiment files are edited in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides, outside a Hydra run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))


# key -> (kind, lower bound, upper bound, what the message says is expected); a key absent from a
# job's config is not checked, ``null`` passes where the kind allows it (nullable kinds end in "?")
CHECKED_KEYS: dict[str, tuple[str, float | None, float | None, str]] = {
    "seed": ("int", 0, None, "an integer >= 0"),
    "trainer.max_epochs": ("int?", -1, None, "an integer >= -1 (-1: no limit) or null"),
    "trainer.max_steps": ("int?", -1, None, "an integer >= -1 (-1: no limit) or null"),
    "data.crop_size": ("int", 1, None, "a positive number of pixels"),
    "data.load_size": ("int?", 1, None, "a positive number of pixels or null (native size)"),
    "data.batch_size": ("int", 1, None, "a positive integer (the global batch)"),
    "data.num_workers": ("int", 0, None, "an integer >= 0"),
    "data.val_fraction": ("float", 0, 1, "a fraction in (0, 1)"),
    "data.max_train_images": ("int?", 1, None, "a positive integer or null (all)"),
    "data.max_skipped_fraction": ("float", 0, 1, "a fraction in [0, 1]"),
    "optimizer.lr": ("float", 0, None, "a positive learning rate"),
    "probe.epochs": ("int", 1, None, "a positive integer"),
    "probe.batch_size": ("int", 1, None, "a positive integer"),
    "recipe.lr": ("float", 0, None, "a positive learning rate"),
    "recipe.batch_size": ("int", 1, None, "a positive integer"),
    "recipe.max_steps": ("int?", -1, None, "an integer >= -1 (-1: no limit) or null"),
    "recipe.max_epochs": ("int?", -1, None, "an integer >= -1 (-1: no limit) or null"),
    "recipe.crop_size": ("int?", 1, None, "a positive number of pixels or null (whole images)"),
}
# bounds that the value may not reach (a learning rate of 0, a validation split of 0 or all images)
OPEN_BOUNDS = {("optimizer.lr", 0), ("recipe.lr", 0), ("data.val_fraction", 0), ("data.val_fraction", 1)}


def check_value(key: str, value: object) -> str | None:
    """Why ``value`` is not acceptable for ``key`` (None when it is); ``key`` is in CHECKED_KEYS."""
    kind, lo, hi, expected = CHECKED_KEYS[key]
    if value is None:
        return None if kind.endswith("?") else f"{key}=null: expected {expected}"
    number = kind.rstrip("?")
    ok_type = isinstance(value, int) if number == "int" else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        return f"{key}={value!r}: expected {expected}"
    v = float(value)
    if v != v or v in (float("inf"), float("-inf")):
        return f"{key}={value!r}: expected {expected}"
    low_bad = lo is not None and (v < lo or (v == lo and (key, lo) in OPEN_BOUNDS))
    high_bad = hi is not None and (v > hi or (v == hi and (key, hi) in OPEN_BOUNDS))
    return f"{key}={value!r}: expected {expected}" if low_bad or high_bad else None


def validate(cfg: DictConfig) -> None:
    """Check the values that commonly arrive mistyped on a command line, before anything is built.

    Raises ConfigError naming the first bad key, the value and what was expected. Values given as
    interpolations are checked as they resolve (``data.seed: ${seed}`` reports ``seed``'s value).
    """
    from omegaconf import OmegaConf

    from ssl_bench.errors import ConfigError

    for key in CHECKED_KEYS:
        if OmegaConf.select(cfg, key, default="__absent__", throw_on_resolution_failure=False) == "__absent__":
            continue
        problem = check_value(key, OmegaConf.select(cfg, key))
        if problem:
            raise ConfigError(problem)
