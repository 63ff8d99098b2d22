"""Caffe2 model-zoo pickles of Goyal et al.'s self-supervision benchmark (fair_self_supervision_benchmark).

A file is a pickled dict, ``{"blobs": {name: numpy array}}`` (or the blobs dict itself), written by
Python 2. Their AlexNet blob names: ``conv1_w``/``conv1_b`` ... ``conv5_w``/``conv5_b``; each conv's
Caffe2 SpatialBN ``conv1norm_s``/``_b`` (scale, shift), ``_rm`` (running mean), ``_riv`` (running
variance, despite the name); fc layers ``fc6_w`` (fully connected, out x in) and ``fc7_w`` when the
file holds them. Solver state (``*_momentum``, ``lr``, ``model_iter``) and linear-probe heads
(``fc_c1``, ``pred`` ...) are ignored. Batch norm is folded into the convolutions with the benchmark's
``BN_EPSILON`` = 1.0000001e-5. Their nets use the CaffeNet geometry (conv1 and the pools unpadded):
``geometry="deploy"``.

Input: the benchmark's colorization AlexNet reads the L of OpenCV's Lab as L - 50 (``L50``), which is
the default for a one-channel conv1; a three-channel pickle does not say how it was fed, so
``convention`` is required then. The Jigsaw AlexNet (siamese ``*_s0`` blobs, conv1 stride 2) is not an
AlexNet-family trunk the suite builds, and is refused.

The pickle is read with an unpickler that only builds numpy arrays and plain containers: a file from
the internet cannot run code.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_bench.errors import CheckpointError, MissingDataError
from ssl_bench.models.layers import CONV_LAYERS
from ssl_bench.weights.convention import InputConvention, suite_convention
from ssl_bench.weights.imported import ImportedWeights, assemble

__all__ = ["BN_EPSILON", "read_caffe2_pkl"]

BN_EPSILON = 1.0000001e-5
# Caffe2 SpatialBN blob suffix -> the suite's BatchNorm2d entry
BN_PARTS = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}


def _safe_globals() -> dict[tuple[str, str], Any]:
    """The (module, name) pairs a pickle of numpy arrays refers to (Python 2 and 3, numpy 1 and 2)."""
    import codecs
    import collections
    import copyreg

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    found: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                         ("collections", "OrderedDict"): collections.OrderedDict,
                                         ("_codecs", "encode"): codecs.encode}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        found[(module, "_reconstruct")] = multiarray._reconstruct
        found[(module, "scalar")] = multiarray.scalar
    for module in ("copy_reg", "copyreg"):
        found[(module, "_reconstructor")] = copyreg._reconstructor
    for module in ("__builtin__", "builtins"):
        found[(module, "object")] = object
    return found


class _NumpyUnpickler(pickle.Unpickler):
    """Builds numpy arrays, numbers, strings and containers; refuses any other global."""

    allowed = _safe_globals()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are expected)")


def load_blobs(path: Path) -> dict[str, np.ndarray]:
    """The blobs of a Caffe2 pickle: {name: array}; a one-line error for anything else."""
    if not path.is_file():
        raise MissingDataError(f"--pkl {path} does not exist")
    try:
        data = _NumpyUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except Exception as e:  # truncated or foreign files raise many types
        raise CheckpointError(f"--pkl {path} is not a readable Caffe2 pickle: {type(e).__name__}: {e}") from e
    blobs = data.get("blobs", data) if isinstance(data, dict) else None
    if not isinstance(blobs, dict):
        raise CheckpointError(f"--pkl {path}: expected a dict of blobs, got {type(data).__name__}")
    return {str(k): v for k, v in blobs.items() if isinstance(v, np.ndarray)}


def _bn_prefix(blobs: Mapping[str, np.ndarray], layer: str) -> str | None:
    for prefix in (f"{layer}norm", f"{layer}_bn"):
        if f"{prefix}_rm" in blobs:
            return prefix
    return None


def suite_state(blobs: Mapping[str, np.ndarray], source: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Blobs -> (state under the suite's key names, suite key -> blob name)."""
    if any(k.startswith("conv1_s0") for k in blobs):
        raise CheckpointError(f"{source}: a Jigsaw AlexNet (siamese '_s0' blobs such as conv1_s0_w, conv1 "
                              "stride 2) is not an AlexNet-family trunk ssl_bench builds")
    state: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}

    def take(ours: str, theirs: str) -> None:
        names[ours] = theirs
        if theirs in blobs:
            state[ours] = torch.from_numpy(np.ascontiguousarray(blobs[theirs], dtype=np.float32))

    for layer in CONV_LAYERS + ("fc6", "fc7"):
        if layer in ("fc6", "fc7") and f"{layer}_w" not in blobs:
            continue
        take(f"{layer}.0.weight", f"{layer}_w")
        take(f"{layer}.0.bias", f"{layer}_b")
        if f"{layer}.0.weight" in state and f"{layer}.0.bias" not in state:
            raise CheckpointError(f"{source}: {layer}_w without its bias {layer}_b")
        prefix = _bn_prefix(blobs, layer)
        if prefix is None:
            continue
        for part, key in BN_PARTS.items():
            if f"{prefix}_{part}" not in blobs and part in ("rm", "riv"):
                raise CheckpointError(f"{source}: batch norm {prefix} has no {prefix}_{part}")
            take(f"{layer}.1.{key}", f"{prefix}_{part}")
    return state, names


def read_caffe2_pkl(pkl: str | Path, convention: InputConvention | None = None,
                    overrides: Mapping[str, Any] | None = None) -> ImportedWeights:
    """An AlexNet of the Caffe2 model zoo as `ImportedWeights`.

    Args:
        pkl: the ``.pkl`` file.
        convention: the network's input; default ``L50`` for a one-channel conv1 (required for three).
        overrides: AlexNet arguments the weights do not fix (default ``geometry="deploy"``; see
            `ssl_bench.weights.imported.assemble`).
    Raises:
        MissingDataError, CheckpointError (unreadable, a missing blob or a wrong shape, named),
        ConfigError (a convention that does not fit conv1).
    """
    path = Path(pkl)
    source = str(path)
    state, names = suite_state(load_blobs(path), source)
    if "conv1.0.weight" not in state:
        raise CheckpointError(f"{source}: no conv1_w blob: not a Caffe2 AlexNet (blobs such as conv1_w, "
                              "conv1_b, conv1norm_rm ... are expected)")
    channels = state["conv1.0.weight"].shape[1] if state["conv1.0.weight"].dim() == 4 else None
    if convention is None:
        if channels != 1:
            raise CheckpointError(f"{source}: conv1_w reads {channels} channels; the pickle does not record "
                                  "how its input was made: give --convention (e.g. bgr255-caffe-mean)")
        convention = suite_convention("L")
    return assemble(state, convention, source, "caffe2-pkl", their=lambda k: names.get(k, k), bn_eps=BN_EPSILON,
                    overrides={"geometry": "deploy", **dict(overrides or {})})
