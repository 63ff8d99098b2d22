"""The one place that reads the suite's weight files, with errors that say what does not match.

Two kinds of file:

- suite checkpoints, written by pretraining (Lightning format): ``state_dict`` plus an
  ``ssl_bench`` entry (pretext, variant, input_space, the trunk's constructor arguments, ...).
  `read_suite_checkpoint` opens one and checks what it holds; `SuiteCheckpoint.load_trunk` rebuilds
  the trunk alone, `SuiteCheckpoint.load_model` fills a whole pretext model (trunk and head, e.g.
  the colorizer or the classifier) built by the caller from the recorded configuration.
- prepared-weights files, written by `save_prepared`: a trunk ready for fine-tuning (batch norm
  absorbed, rescaled, colour branch), under ``ssl_bench_prepared``.

The two top-level keys differ so that one kind of file is never mistaken for the other.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ssl_bench.errors import CheckpointError, MissingDataError
from ssl_bench.io import atomic_writer
from ssl_bench.models.alexnet import AlexNet
from ssl_bench.models.prepare import ColorInputTrunk, prepared_mode
from ssl_bench.models.split_brain import SplitBrainAlexNet
from ssl_bench.weights.convention import ConventionTrunk, InputConvention, wrap_native

__all__ = [
    "PREPARED_KEY", "SUITE_KEY", "CheckpointMismatchError", "SuiteCheckpoint", "check_state_dict",
    "load_prepared", "load_state", "load_suite_trunk", "read_checkpoint", "read_state_dict",
    "read_suite_checkpoint", "save_prepared",
]

SUITE_KEY = "ssl_bench"
PREPARED_KEY = "ssl_bench_prepared"
PREPARED_FORMAT = 1
TRUNK_PREFIX = "trunk."

ModelT = TypeVar("ModelT", bound=nn.Module)


class CheckpointMismatchError(CheckpointError):
    """A file is not the checkpoint expected, or its tensors do not fit the model (the message names
    the file and what was expected: missing/unexpected/reshaped keys, the wrong pretext, ...)."""


# ------------------------------------------------------------------------------------ raw files


def _torch_load(path: str | Path, weights_only: bool) -> Any:
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointMismatchError(f"checkpoint {path} is not a readable torch file: {e}") from e


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw contents of a suite file (a dict). Lightning checkpoints pickle more than tensors,
    hence ``weights_only=False``: read only the suite's own files this way."""
    ckpt = _torch_load(path, weights_only=False)
    if not isinstance(ckpt, dict):
        raise CheckpointMismatchError(f"checkpoint {path}: expected a dict, got {type(ckpt).__name__}")
    return ckpt


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A plain state dict from a file written outside the suite (e.g. torchvision weights), read
    with ``weights_only=True``; a ``{"state_dict": ...}`` wrapper is unwrapped."""
    state = _torch_load(path, weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"checkpoint {path}: expected a state dict, got {type(state).__name__}")
    return state


def _show(keys: list[str]) -> str:
    return ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "") or "none"


def check_state_dict(model: nn.Module, state: dict[str, Tensor], source: str, prefix: str = "") -> None:
    """Raise CheckpointMismatchError unless ``state`` (keys stripped of ``prefix``) fits ``model`` exactly."""
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                      for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or reshaped:
        raise CheckpointMismatchError(
            f"checkpoint {source} does not match the model architecture: missing keys: {_show(missing)}; "
            f"unexpected keys: {_show(unexpected)}; shape mismatches: {_show(reshaped)}")


def load_state(model: ModelT, state: dict[str, Tensor], source: str) -> ModelT:
    """``model`` with ``state`` loaded, after `check_state_dict` (so a mismatch names ``source``)."""
    check_state_dict(model, state, source)
    model.load_state_dict(state)
    return model


# ------------------------------------------------------------------------------ suite checkpoints


@dataclass(frozen=True)
class SuiteCheckpoint:
    """An opened suite checkpoint: ``meta`` is its ``ssl_bench`` entry (with at least ``trunk``, the
    trunk's constructor arguments), ``state_dict`` the whole model's weights."""

    path: Path
    meta: dict[str, Any]
    state_dict: dict[str, Tensor]

    @property
    def pretext(self) -> str:
        return str(self.meta.get("pretext", "unknown"))

    @property
    def method(self) -> str:
        """The pretext and its variant as ``pretext/variant`` (the pretext alone if it has none)."""
        variant = self.meta.get("variant")
        return f"{self.pretext}/{variant}" if variant else self.pretext

    def info(self) -> dict[str, Any]:
        """{"method", "pretext", "variant", "input_space", "source", "trunk", "input_convention"}: the
        description that runs record of the pretrained weights they start from (``input_convention``:
        an imported network's own input, None for the suite's)."""
        trunk = self.meta["trunk"]
        return {"method": self.method, "pretext": self.pretext, "variant": self.meta.get("variant"),
                "input_space": self.meta.get("input_space", trunk.get("input_space")),
                "source": str(self.path), "trunk": trunk, "input_convention": self.meta.get("input_convention")}

    def build_trunk(self, **overrides: Any) -> AlexNet:
        """An untrained trunk of the recorded architecture (to build a whole model around).
        ``overrides`` replace recorded constructor arguments that leave the state dict unchanged
        (``geometry``, ``dropout``)."""
        config = {**self.meta["trunk"], **overrides}
        # a trunk of another class of the family records its constructor as a Hydra-style _target_
        build = _locate(config.pop("_target_")) if "_target_" in config else AlexNet
        try:
            return build(**config)
        except (TypeError, ValueError) as e:
            raise CheckpointMismatchError(f"checkpoint {self.path}: cannot rebuild the trunk from its "
                                          f"recorded configuration {self.meta['trunk']}: {e}") from e

    def load_native_trunk(self, **overrides: Any) -> AlexNet:
        """The pretrained trunk (the state dict's ``trunk.`` keys), in eval mode, fed its own input
        (an imported network's ``input_convention``); ``overrides`` as in `build_trunk`."""
        weights = {k[len(TRUNK_PREFIX):]: v for k, v in self.state_dict.items() if k.startswith(TRUNK_PREFIX)}
        if not weights:
            raise CheckpointMismatchError(f"checkpoint {self.path} has no trunk weights ('trunk.*' keys)")
        return load_state(self.build_trunk(**overrides), weights, str(self.path)).eval()

    def load_trunk(self, **overrides: Any) -> nn.Module:
        """The pretrained trunk as the suite feeds it (suite-space input, ``trunk_input``), in eval mode;
        ``overrides`` as in `build_trunk` (e.g. ``geometry="deploy"``). An imported network whose input
        convention differs from the suite's comes wrapped in a `ConventionTrunk` that converts it."""
        return wrap_native(self.load_native_trunk(**overrides), self.meta.get("input_convention"))

    def load_model(self, model: ModelT) -> ModelT:
        """``model`` (built from this checkpoint's configuration: trunk and head) with the whole
        state dict loaded, in eval mode."""
        return load_state(model, self.state_dict, str(self.path)).eval()


def _locate(target: str) -> Any:
    """The callable named by a dotted path (``ssl_bench.models.x.Cls``); only ssl_bench's own names."""
    module, _, attr = str(target).rpartition(".")
    if not module.startswith("ssl_bench."):
        raise CheckpointMismatchError(f"trunk _target_ {target!r} is not an ssl_bench class")
    return getattr(importlib.import_module(module), attr)


def read_suite_checkpoint(path: str | Path, pretext: str | None = None, expected: str | None = None,
                          hint: str = "") -> SuiteCheckpoint:
    """Open a suite checkpoint, optionally requiring a given pretext.

    Args:
        path: the checkpoint file.
        pretext: the pretext the caller needs (None: any).
        expected: what the caller needs, for the error messages ("a colorization model");
            default "a pretext=<pretext> model".
        hint: appended to the error messages (what to give instead).
    Raises:
        FileNotFoundError: no such file.
        CheckpointMismatchError: unreadable, not written by ssl_bench, without a state dict, or of
            another pretext.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    meta = ckpt.get(SUITE_KEY)
    needed = expected or (f"a pretext={pretext} model" if pretext else None)
    subject = f"checkpoint {path} is not {needed}: it" if needed else f"checkpoint {path}"
    tail = f"; {hint}" if hint else ""
    if not isinstance(meta, dict) or "trunk" not in meta:
        if PREPARED_KEY in ckpt:  # the likeliest mix-up: say what the file is
            tail = f" (it is a prepared-weights file, already prepared for fine-tuning){tail}"
        raise CheckpointMismatchError(f"{subject} was not written by ssl_bench (no '{SUITE_KEY}' entry "
                                      f"with the trunk's configuration){tail}")
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"checkpoint {path} has no state_dict")
    opened = SuiteCheckpoint(path, meta, state)
    if pretext is not None and opened.pretext != pretext:
        raise CheckpointMismatchError(f"{subject} holds a {opened.method!r} model{tail}")
    return opened


def load_suite_trunk(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The pretrained trunk of a suite checkpoint (any pretext), in eval mode, and
    `SuiteCheckpoint.info` ({"method", "pretext", "variant", "input_space", "source", "trunk"})."""
    opened = read_suite_checkpoint(path)
    return opened.load_trunk(), opened.info()


# ------------------------------------------------------------------------------ prepared weights


def save_prepared(trunk: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write a prepared module atomically: no partial file is ever left at ``path``, even if the
    process dies mid-write.

    Stored: ``{"state_dict", PREPARED_KEY: {"format", "config", "mode", "input_space", "meta"}}``.
    """
    # an imported network keeps its input convention: stored beside the wrapped module, re-applied on load
    convention = trunk.convention if isinstance(trunk, ConventionTrunk) else None
    inner = trunk.trunk if isinstance(trunk, ConventionTrunk) else trunk
    if not isinstance(inner, (AlexNet, ColorInputTrunk, SplitBrainAlexNet)):
        raise TypeError(f"save_prepared: expected an AlexNet, ColorInputTrunk or SplitBrainAlexNet, "
                        f"got {type(inner).__name__}")
    path = Path(path)
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
        PREPARED_KEY: {"format": PREPARED_FORMAT, "config": dict(inner.config), "mode": prepared_mode(inner),
                       "input_space": trunk.input_space, "meta": dict(meta or {}),
                       "input_convention": convention.to_dict() if convention else None},
    }
    with atomic_writer(path) as f:
        torch.save(payload, f)
    return path


def load_prepared(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a module written by `save_prepared`.

    Returns:
        (module in eval mode, {"mode", "input_space", "config", "meta"}).
    Raises:
        FileNotFoundError, CheckpointMismatchError.
    """
    ckpt = read_checkpoint(path)
    record = ckpt.get(PREPARED_KEY)
    if not isinstance(record, dict) or "config" not in record:
        hint = " (it is a suite checkpoint: prepare it with prepare-weights first)" if SUITE_KEY in ckpt else ""
        raise CheckpointMismatchError(f"{path} is not a prepared-weights file (no '{PREPARED_KEY}' entry){hint}")
    config = dict(record["config"])
    color = bool(config.pop("color_branch", False))
    build = _locate(config.pop("_target_")) if "_target_" in config else AlexNet  # e.g. the split-brain trunk
    try:
        module: nn.Module = build(**config)
    except (TypeError, ValueError) as e:
        raise CheckpointMismatchError(f"{path}: cannot rebuild the trunk from {record['config']}: {e}") from e
    if color:
        module = ColorInputTrunk(module)
    load_state(module, ckpt.get("state_dict", {}), str(path))
    mode = record.get("mode", prepared_mode(module))
    if record.get("input_convention"):
        module = ConventionTrunk(module, InputConvention.from_dict(record["input_convention"]))
    return module.eval(), {"mode": mode,
                           "input_space": record.get("input_space", module.input_space),
                           "config": record["config"], "meta": record.get("meta", {})}
