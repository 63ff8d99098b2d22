"""What every importer returns: an AlexNet-family trunk's constructor arguments and weights, and the
input convention the original network expects; how it is assembled from weights under the suite's key
names, and how it is written as a normal suite checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssl_bench.errors import CheckpointError, ConfigError, MissingDataError
from ssl_bench.io import atomic_writer
from ssl_bench.models.alexnet import AlexNet
from ssl_bench.models.layers import CONV_LAYERS, LAYERS
from ssl_bench.weights.convention import InputConvention

__all__ = ["IMPORTED_PRETEXT", "ImportedWeights", "InputConvention", "assemble", "build_imported_trunk",
           "check_layers", "read_torch_file", "write_imported"]

IMPORTED_PRETEXT = "imported"
KERNELS = {"conv1": 11, "conv2": 5, "conv3": 3, "conv4": 3, "conv5": 3, "fc7": 1}
# conv2, conv4 and conv5 are the two-group convolutions of the original AlexNet
GROUPED = ("conv2", "conv4", "conv5")
# a missing fc6/fc7 (trunks published without them) gets this seeded Gaussian init, so re-imports agree
FRESH_SEED = 0


@dataclass(frozen=True)
class ImportedWeights:
    """An imported trunk.

    Attributes:
        trunk: ``ssl_bench.models.alexnet.AlexNet`` constructor arguments (geometry, groups, lrn, ...).
        state_dict: the trunk's weights under AlexNet's own key names (``conv1.0.weight`` ...).
        convention: the input the network expects.
        source: the files it came from (recorded in the checkpoint).
        fmt: the format name ("caffe", "caffe2-pkl", "vissl", "state-dict").
        extra: anything else worth keeping (e.g. a colour model's ab branch), stored beside the trunk.
        initialised: layers the file does not hold, freshly initialised (e.g. fc6/fc7 of a trunk
            published without them): recorded so that nobody reads them as pretrained.
    """

    trunk: dict[str, Any]
    state_dict: dict[str, Tensor]
    convention: InputConvention
    source: str
    fmt: str
    extra: dict[str, Any] = field(default_factory=dict)
    initialised: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------ reading


def read_torch_file(path: Path, option: str) -> Any:
    """A torch file from outside the suite, read with ``weights_only=True`` (tensors and plain containers:
    a downloaded file cannot run code); errors name ``option`` and the file."""
    if not path.is_file():
        raise MissingDataError(f"{option} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or foreign file
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{option} {path} is not a readable torch file: {type(e).__name__}: {first}") from e


# ------------------------------------------------------------------------------------ assembly


def _shape_error(source: str, name: str, what: str, tensor: Tensor) -> CheckpointError:
    return CheckpointError(f"{source}: {name}: expected {what}, got shape {tuple(tensor.shape)}")


def _conv_geometry(state: Mapping[str, Tensor], source: str, their: Callable[[str], str]) -> dict[str, Any]:
    """in_channels, widths and groups from conv1..conv5's weights (their kernels and channels checked)."""
    widths, grouped = [], set()
    cin = None
    for i, name in enumerate(CONV_LAYERS):
        key = f"{name}.0.weight"
        if key not in state:
            raise CheckpointError(f"{source}: no weights for {name} ({their(key)})")
        w = state[key]
        k = KERNELS[name]
        if w.dim() != 4 or tuple(w.shape[2:]) != (k, k):
            raise _shape_error(source, their(key), f"a {k}x{k} convolution (out, in, {k}, {k})", w)
        prev = w.shape[1] if i == 0 else widths[-1]
        if i == 0:
            cin = int(w.shape[1])
            if cin not in (1, 3):
                raise _shape_error(source, their(key), "1 (lightness) or 3 (colour) input channels", w)
        elif w.shape[1] * 2 == prev and name in GROUPED:
            grouped.add(name)
        elif w.shape[1] != prev:
            raise _shape_error(source, their(key), f"{prev} input channels (or {prev // 2} in each of two "
                               "groups)", w)
        widths.append(int(w.shape[0]))
    if grouped and grouped != set(GROUPED):
        raise CheckpointError(f"{source}: grouped convolutions in {sorted(grouped)} only; an AlexNet-family trunk "
                              f"groups all of {list(GROUPED)} or none")
    return {"in_channels": cin, "widths": widths, "groups": bool(grouped)}


def _fc_geometry(state: dict[str, Tensor], source: str, their: Callable[[str], str], w5: int) -> dict[str, Any]:
    """fc_channels and fc6_kernel from fc6/fc7 (fully connected weights reshaped to convolutions, in place)."""
    w6 = state["fc6.0.weight"]
    if w6.dim() == 2:  # a fully connected fc6 reads the flattened C x k x k pool5 map
        k = int(round((w6.shape[1] / w5) ** 0.5))
        if k * k * w5 != w6.shape[1]:
            raise _shape_error(source, their("fc6.0.weight"), f"(out, {w5} x k x k) on conv5's {w5} channels", w6)
        w6 = state["fc6.0.weight"] = w6.reshape(w6.shape[0], w5, k, k)
    if w6.dim() != 4 or w6.shape[1] != w5 or w6.shape[2] != w6.shape[3]:
        raise _shape_error(source, their("fc6.0.weight"), f"(out, {w5}, k, k) on conv5's {w5} channels", w6)
    w7 = state["fc7.0.weight"]
    if w7.dim() == 2:
        w7 = state["fc7.0.weight"] = w7[:, :, None, None]
    if tuple(w7.shape) != (w6.shape[0], w6.shape[0], 1, 1):
        raise _shape_error(source, their("fc7.0.weight"), f"({w6.shape[0]}, {w6.shape[0]}) after fc6", w7)
    return {"fc_channels": int(w6.shape[0]), "fc6_kernel": int(w6.shape[2])}


@torch.no_grad()
def _fold_batch_norm(state: dict[str, Tensor], layers: list[str], eps: float) -> dict[str, Tensor]:
    """Conv + eval-mode batch norm (affine or not) folded into one conv, in float64: W' = W g / s,
    b' = (b - mean) g / s + beta with s = sqrt(var + eps). Returns the state without BN keys."""
    out = {k: v for k, v in state.items() if ".1." not in k}
    for name in layers:
        mean = state.get(f"{name}.1.running_mean")
        if mean is None:
            continue
        w, b = state[f"{name}.0.weight"].double(), state[f"{name}.0.bias"].double()
        gamma = state.get(f"{name}.1.weight", torch.ones_like(mean)).double()
        beta = state.get(f"{name}.1.bias", torch.zeros_like(mean)).double()
        scale = gamma / torch.sqrt(state[f"{name}.1.running_var"].double() + eps)
        out[f"{name}.0.weight"] = (w * scale.view(-1, 1, 1, 1)).float()
        out[f"{name}.0.bias"] = ((b - mean.double()) * scale + beta).float()
    return out


def _check_vectors(state: Mapping[str, Tensor], source: str, their: Callable[[str], str]) -> None:
    """Every bias and batch-norm vector has one value per output channel of its layer."""
    for key, v in state.items():
        if key.endswith((".0.weight", "num_batches_tracked")):
            continue
        layer = key.split(".")[0]
        weight = state.get(f"{layer}.0.weight")
        if weight is not None and tuple(v.shape) != (weight.shape[0],):
            raise _shape_error(source, their(key), f"({weight.shape[0]},): one value per {layer} channel", v)


def _batch_norm_plan(state: Mapping[str, Tensor], layers: list[str]) -> bool:
    """True: keep the suite's batch norm (every layer has a non-affine BN); False: fold what there is."""
    has_bn = [f"{n}.1.running_mean" in state for n in layers]
    affine = any(f"{n}.1.weight" in state or f"{n}.1.bias" in state for n in layers)
    return all(has_bn) and not affine


def _fresh_fc(config: dict[str, Any]) -> dict[str, Tensor]:
    """fc6/fc7 of a seeded, freshly initialised trunk of ``config``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(FRESH_SEED)
        fresh = AlexNet(**config).state_dict()
    return {k: v for k, v in fresh.items() if k.split(".")[0] in ("fc6", "fc7")}


def assemble(state: Mapping[str, Tensor], convention: InputConvention, source: str, fmt: str, *,
             their: Callable[[str], str] = str, bn_eps: float = 1e-5, overrides: Mapping[str, Any] | None = None,
             extra: dict[str, Any] | None = None) -> ImportedWeights:
    """An `ImportedWeights` from weights already under the suite's key names.

    Args:
        state: ``convN.0.weight/bias`` (conv1..conv5 required), optionally ``fc6``/``fc7`` (convolution
            or fully connected shapes) and batch norm ``convN.1.running_mean/running_var`` with optional
            affine ``convN.1.weight/bias``. Non-affine BN on every layer is kept; any other BN is folded
            into the convolutions with ``bn_eps`` (the function in eval mode is unchanged).
        convention: the network's input; its channel count must match conv1.
        source: the file(s), for messages and the checkpoint.
        fmt: the format name.
        their: maps a suite key to the name the source file uses (for messages).
        overrides: AlexNet constructor arguments not visible in the weights (``geometry``,
            ``fc6_dilation``, ``lrn``, ``dropout``; ``fc_channels`` / ``fc6_kernel`` for a trunk without
            fc6/fc7, which then get a seeded fresh init and are listed in ``initialised``).
    Raises:
        CheckpointError: a missing layer or a shape that no AlexNet-family trunk has (names the key).
        ConfigError: an override that contradicts the weights or the convention.
    """
    state = {k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu() for k, v in state.items()}
    overrides = dict(overrides or {})
    config = _conv_geometry(state, source, their)
    if config["in_channels"] != convention.in_channels:
        raise ConfigError(f"{source}: conv1 reads {config['in_channels']} channel(s) but the input convention "
                          f"{convention.channels!r} gives {convention.in_channels}; choose another --convention")
    has_fc = [n for n in ("fc6", "fc7") if f"{n}.0.weight" in state]
    if len(has_fc) == 1:
        raise CheckpointError(f"{source}: {has_fc[0]} without {({'fc6', 'fc7'} - set(has_fc)).pop()}: "
                              f"({their('fc6.0.weight')}, {their('fc7.0.weight')})")
    if has_fc:
        config.update(_fc_geometry(state, source, their, config["widths"][-1]))
        for key in ("fc_channels", "fc6_kernel"):
            if key in overrides and overrides[key] != config[key]:
                raise ConfigError(f"{key}={overrides[key]} contradicts the weights of {source} ({config[key]})")
    _check_vectors(state, source, their)
    layers = list(CONV_LAYERS) + has_fc
    keep_bn = _batch_norm_plan(state, layers)
    if keep_bn:
        for name in layers:  # a counter only (no effect on the function); files from outside may lack it
            state.setdefault(f"{name}.1.num_batches_tracked", torch.tensor(0))
    else:
        state = _fold_batch_norm(state, layers, bn_eps)
    config.update(batch_norm=keep_bn, input_space=convention.suite_space)
    unknown = set(overrides) - {"geometry", "fc6_dilation", "lrn", "dropout", "fc_channels", "fc6_kernel"}
    if unknown:
        raise ConfigError(f"trunk config: unknown or fixed-by-the-weights key(s) {sorted(unknown)}")
    config.update(overrides)
    try:
        config = _constructor_args(config)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"trunk config for {source}: {e}") from e
    initialised: tuple[str, ...] = ()
    if not has_fc:
        state.update(_fresh_fc(config))
        initialised = ("fc6", "fc7")
    return ImportedWeights(config, state, convention, source, fmt, dict(extra or {}), initialised)


def _constructor_args(config: dict[str, Any]) -> dict[str, Any]:
    """The full constructor arguments (defaults filled in), validated by building a meta-device trunk."""
    with torch.device("meta"):
        return dict(AlexNet(**config).config)


# ------------------------------------------------------------------------------------ writing


def build_imported_trunk(weights: ImportedWeights) -> AlexNet:
    """The trunk of ``weights``, loaded and in eval mode (the network's own input convention)."""
    from ssl_bench.models.checkpoint import load_state

    try:
        with torch.random.fork_rng(devices=[]):  # the init is overwritten: keep the caller's RNG
            trunk = AlexNet(**weights.trunk)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{weights.source}: cannot build the trunk {weights.trunk}: {e}") from e
    if trunk.in_channels != weights.convention.in_channels or trunk.input_space != weights.convention.suite_space:
        raise ConfigError(f"{weights.source}: the trunk reads {trunk.in_channels} channel(s) ({trunk.input_space!r}) "
                          f"but the input convention is {weights.convention.channels!r}")
    return load_state(trunk, dict(weights.state_dict), weights.source).eval()


def write_imported(weights: ImportedWeights, out: Path) -> Path:
    """Write ``weights`` as a suite checkpoint at ``out`` (atomically: nothing is left there on error).

    The file is what pretraining writes: ``state_dict`` (``trunk.`` keys) and the ``ssl_bench`` entry
    with ``trunk`` (constructor arguments), ``pretext = "imported"``, ``variant`` = the format,
    ``input_space`` (the suite space the evaluators feed), ``input_convention``, ``source`` and
    ``initialised``; ``extra`` holds anything else the importer kept.
    """
    from ssl_bench.models.checkpoint import SUITE_KEY, TRUNK_PREFIX

    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the checkpoint's file name")
    trunk = build_imported_trunk(weights)
    meta = {"trunk": dict(trunk.config), "pretext": IMPORTED_PRETEXT, "variant": weights.fmt,
            "input_space": weights.convention.suite_space, "input_convention": weights.convention.to_dict(),
            "source": weights.source, "initialised": list(weights.initialised)}
    payload = {"state_dict": {TRUNK_PREFIX + k: v.detach().cpu().contiguous() for k, v in trunk.state_dict().items()},
               SUITE_KEY: meta, "extra": dict(weights.extra)}
    with atomic_writer(out) as f:
        torch.save(payload, f)
    return out


def check_layers(names: Mapping[str, str]) -> None:
    """Every target of a key mapping is a key of the AlexNet family (``conv1.0.weight`` ...)."""
    layers = set(LAYERS)
    for theirs, ours in names.items():
        parts = str(ours).split(".")
        if len(parts) != 3 or parts[0] not in layers or parts[1] not in ("0", "1"):
            raise ConfigError(f"mapping {theirs!r} -> {ours!r}: expected a suite key such as conv1.0.weight, "
                              "conv1.0.bias or conv1.1.running_mean (layers conv1..conv5, fc6, fc7)")
