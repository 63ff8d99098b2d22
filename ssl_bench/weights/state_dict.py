"""A user's own AlexNet-family PyTorch weights: a state dict, a key mapping and the trunk's configuration.

    ssl-bench import-weights state-dict --weights W.pt [--mapping M.yaml] [--trunk-config C.yaml] --out CKPT

``--mapping`` is a YAML mapping from the file's key names to the suite's (``features.0.weight:
conv1.0.weight``); keys it does not name are ignored (a classifier head, say), every key it names must
be in the file. Without a mapping the file's keys are the suite's own (an ``ssl-bench export``).
Batch norm may be the suite's (no affine part: kept) or any other (folded into the convolutions).

``--trunk-config`` is a YAML or JSON mapping of AlexNet constructor arguments, or a model card written
by ``ssl-bench export`` (its ``trunk`` and ``input_convention`` are used). Channel counts, groups and
kernel sizes come from the weights; the file sets what the weights cannot show (``geometry``,
``fc6_dilation``, ``lrn``, ``dropout``) and any other argument it gives is checked against them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from ssl_bench.errors import CheckpointError, ConfigError, MissingDataError
from ssl_bench.weights.convention import InputConvention, suite_convention
from ssl_bench.weights.imported import ImportedWeights, assemble, check_layers, read_torch_file

__all__ = ["SETTABLE", "read_mapped_state_dict", "read_mapping", "read_trunk_config"]

# constructor arguments the weights cannot show
SETTABLE = ("geometry", "fc6_dilation", "lrn", "dropout", "fc_channels", "fc6_kernel")
# constructor arguments the weights fix: checked, never set
DERIVED = ("in_channels", "widths", "groups", "batch_norm", "input_space", "fc_channels", "fc6_kernel")


def _read_structured(path: Path, option: str) -> Any:
    """A YAML or JSON file (JSON is YAML) as plain Python values."""
    import yaml

    if not path.is_file():
        raise MissingDataError(f"{option} {path} does not exist")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{option} {path} is not valid YAML/JSON: {str(e).splitlines()[0]}") from e


def read_mapping(path: Path) -> dict[str, str]:
    """{file key: suite key} from ``--mapping``; targets must be suite keys, each used once."""
    data = _read_structured(path, "--mapping")
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"--mapping {path}: expected a non-empty mapping 'their.key: conv1.0.weight'")
    mapping = {str(k): str(v) for k, v in data.items()}
    check_layers(mapping)
    seen: dict[str, str] = {}
    for theirs, ours in mapping.items():
        if ours in seen:
            raise ConfigError(f"--mapping {path}: {seen[ours]!r} and {theirs!r} both map to {ours!r}")
        seen[ours] = theirs
    return mapping


def read_trunk_config(path: Path) -> tuple[dict[str, Any], InputConvention | None]:
    """(constructor arguments, input convention or None) from ``--trunk-config`` (a mapping or a model card)."""
    data = _read_structured(path, "--trunk-config")
    if not isinstance(data, dict):
        raise ConfigError(f"--trunk-config {path}: expected a mapping of AlexNet arguments (or a model card)")
    convention = None
    if isinstance(data.get("trunk"), dict):  # a model card
        if isinstance(data.get("input_convention"), dict):
            convention = InputConvention.from_dict(data["input_convention"])
        data = data["trunk"]
    known = set(SETTABLE) | set(DERIVED) | {"input_convention"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"--trunk-config {path}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    if isinstance(data.get("input_convention"), dict):
        convention = InputConvention.from_dict(data["input_convention"])
    return {k: v for k, v in data.items() if k != "input_convention"}, convention


def _mapped(weights: Mapping[str, Tensor], mapping: dict[str, str] | None, source: str,
            mapping_path: Path | None) -> dict[str, Tensor]:
    if mapping is None:
        return {k.removeprefix("trunk."): v for k, v in weights.items()}
    absent = [k for k in mapping if k not in weights]
    if absent:
        held = ", ".join(sorted(weights)[:6])
        raise CheckpointError(f"{source}: key {absent[0]!r} named in --mapping {mapping_path} is not in the file"
                              f"{f' ({len(absent)} missing in all)' if len(absent) > 1 else ''}; it holds {held}, ...")
    return {ours: weights[theirs] for theirs, ours in mapping.items()}


def read_mapped_state_dict(weights: str | Path, mapping: str | Path | None = None,
                           trunk_config: str | Path | dict[str, Any] | None = None,
                           convention: InputConvention | None = None) -> ImportedWeights:
    """A mapped PyTorch state dict as `ImportedWeights`.

    Args:
        weights: a ``torch.save``d state dict (or ``{"state_dict": ...}``), read with ``weights_only``.
        mapping: the ``--mapping`` YAML (None: the file's keys are the suite's).
        trunk_config: a file (see the module docstring) or a dict of constructor arguments.
        convention: the network's input; default the card's, else the suite's for its channel count.
    Raises:
        MissingDataError, CheckpointError (unreadable, a key of the mapping missing, a shape, named),
        ConfigError (a bad mapping or config).
    """
    path = Path(weights)
    source = str(path)
    raw = read_torch_file(path, "--weights")
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not any(isinstance(v, Tensor) for v in raw.values()):
        raise CheckpointError(f"--weights {path}: expected a state dict (a dict of tensors), got {type(raw).__name__}")
    tensors = {str(k): v for k, v in raw.items() if isinstance(v, Tensor)}
    mapping_path = Path(mapping) if mapping is not None else None
    names = read_mapping(mapping_path) if mapping_path else None
    state = _mapped(tensors, names, source, mapping_path)
    theirs = {ours: f"{key} (mapped to {ours})" for key, ours in (names or {}).items()}
    config, card_convention = ({**trunk_config}, None) if isinstance(trunk_config, dict) else \
        read_trunk_config(Path(trunk_config)) if trunk_config is not None else ({}, None)
    convention = convention or card_convention
    if convention is None:
        w1 = state.get("conv1.0.weight")
        convention = suite_convention("L" if w1 is not None and w1.dim() == 4 and w1.shape[1] == 1 else "rgb")
    settable = {k: v for k, v in config.items() if k in SETTABLE and (k not in DERIVED or "fc6.0.weight" not in state)}
    imported = assemble(state, convention, source, "state-dict", their=lambda k: theirs.get(k, k), overrides=settable)
    for key in DERIVED:
        if key in config and _plain(config[key]) != _plain(imported.trunk[key]):
            raise ConfigError(f"trunk config {key}={config[key]!r} contradicts the weights of {source} "
                              f"({imported.trunk[key]!r})")
    return imported


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else json.loads(json.dumps(value))
