"""VISSL / ClassyVision checkpoints of AlexNet trunks (``.torch`` files).

A training checkpoint keeps the trunk under ``["classy_state_dict"]["base_model"]["model"]["trunk"]``;
converted model-zoo files keep it under ``["model_state_dict"]`` (or a plain ``state_dict``). VISSL's
AlexNet trunks (``vissl/models/trunks/alexnet_colorization.py``) are a ``_feature_blocks`` ModuleList:
0 conv1 (conv, BatchNorm2d, ReLU), 1 pool1, 2 conv2, 3 pool2, 4 conv3, 5 conv4, 6 conv5, 7 pool5, 8
flatten; so ``_feature_blocks.0.0.weight`` is conv1's filters and ``_feature_blocks.0.1.*`` its (affine)
batch norm, which is folded into the convolutions. There are no fc6/fc7 in a VISSL trunk (the heads
hold them): they get a seeded fresh init and are recorded as such.

The pools are unpadded (``geometry="deploy"``; PyTorch floors where Caffe ceils, which gives the same
maps at 227). A VISSL trunk without batch norm (``alexnet_bvlc``) normalises before pooling, an order
the suite's AlexNet does not have: refused. Input: VISSL's colorization trunk reads OpenCV's L as
L - 50 (``L50``, the default for one channel); three-channel trunks default to ImageNet-normalised RGB.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from ssl_bench.errors import CheckpointError
from ssl_bench.weights.convention import InputConvention, suite_convention
from ssl_bench.weights.imported import ImportedWeights, assemble, read_torch_file

__all__ = ["BLOCKS", "TRUNK_PATHS", "read_vissl", "trunk_weights"]

# where a trunk's state dict sits in the checkpoint, tried in this order
TRUNK_PATHS: tuple[tuple[str, ...], ...] = (
    ("classy_state_dict", "base_model", "model", "trunk"),
    ("model_state_dict",),
    ("state_dict",),
    (),
)
# _feature_blocks index -> layer
BLOCKS = {0: "conv1", 2: "conv2", 4: "conv3", 5: "conv4", 6: "conv5"}
PREFIXES = ("module.", "trunk.", "base_model.", "_feature_blocks.")
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def trunk_weights(ckpt: Any, source: str) -> tuple[dict[str, Tensor], str]:
    """(the trunk's tensors with the ``_feature_blocks.`` style prefixes removed, where they were found)."""
    for path in TRUNK_PATHS:
        node = ckpt
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and any(isinstance(v, Tensor) for v in node.values()):
            return {_strip(k): v for k, v in node.items() if isinstance(v, Tensor)}, ".".join(path) or "top level"
    top = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
    raise CheckpointError(f"{source}: no trunk weights under {' or '.join(repr('.'.join(p)) for p in TRUNK_PATHS if p)}"
                          f" (top-level keys: {top})")


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def suite_state(trunk: Mapping[str, Tensor], source: str, where: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``<block>.<0|1>.<param>`` -> (state under the suite's key names, suite key -> VISSL key)."""
    state: dict[str, Tensor] = {}
    names: dict[str, str] = {}
    for key, value in trunk.items():
        parts = key.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            raise CheckpointError(f"{source}: unexpected trunk key {where}: _feature_blocks.{key}; expected "
                                  "the blocks of a VISSL AlexNet (_feature_blocks.<block>.<0 conv|1 batch norm>.*)")
        block, part, param = int(parts[0]), parts[1], parts[2]
        if block not in BLOCKS or part not in ("0", "1") or (part == "0" and param not in ("weight", "bias")) \
                or (part == "1" and param not in BN_KEYS):
            raise CheckpointError(f"{source}: unsupported layer _feature_blocks.{key}: a VISSL AlexNet has "
                                  f"convolutions in blocks {sorted(BLOCKS)} (conv at .0, batch norm at .1)")
        ours = f"{BLOCKS[block]}.{part}.{param}"
        state[ours], names[ours] = value, f"_feature_blocks.{key}"
    missing_bn = [n for n in BLOCKS.values() if f"{n}.0.weight" in state and f"{n}.1.running_mean" not in state]
    if missing_bn:
        raise CheckpointError(f"{source}: {', '.join(missing_bn)} without batch norm (e.g. alexnet_bvlc, which "
                              "normalises before pooling): not an AlexNet-family layout ssl_bench builds")
    return state, names


def _vissl_name(key: str) -> str:
    """The VISSL key of a suite key (``conv2.0.weight`` -> ``_feature_blocks.2.0.weight``)."""
    block = {layer: b for b, layer in BLOCKS.items()}.get(key.split(".")[0])
    return key if block is None else f"_feature_blocks.{block}.{key.split('.', 1)[1]}"


def read_vissl(checkpoint: str | Path, convention: InputConvention | None = None,
               overrides: Mapping[str, Any] | None = None) -> ImportedWeights:
    """A VISSL AlexNet trunk as `ImportedWeights`.

    Args:
        checkpoint: the ``.torch`` file.
        convention: the network's input; default ``L50`` for one input channel, ImageNet-normalised RGB
            for three.
        overrides: AlexNet arguments the weights do not fix (default ``geometry="deploy"``;
            ``fc_channels``, ``fc6_kernel`` size the fresh fc6/fc7).
    Raises:
        MissingDataError, CheckpointError (unreadable, no trunk, an unsupported layer or a wrong shape,
        named), ConfigError.
    """
    path = Path(checkpoint)
    source = str(path)
    trunk, where = trunk_weights(read_torch_file(path, "--checkpoint"), source)
    state, names = suite_state(trunk, source, where)
    if convention is None:
        w1 = state.get("conv1.0.weight")
        convention = suite_convention("L" if w1 is not None and w1.dim() == 4 and w1.shape[1] == 1 else "rgb")
    return assemble(state, convention, source, "vissl", their=lambda k: names.get(k) or _vissl_name(k),
                    overrides={"geometry": "deploy", **dict(overrides or {})})
