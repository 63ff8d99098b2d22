"""Caffe models (a ``.prototxt`` and its ``.caffemodel``) -> an AlexNet-family trunk, without Caffe.

The prototxt gives the geometry, the caffemodel the weights (decoded by `ssl_bench.weights.caffe_proto`).
The trunk layers are found by name (conv1..conv5, fc6, fc7); everything else the importer reads is found by
following blobs from them: the batch norm / scale / ReLU / pooling / LRN / dropout layers between two trunk
layers, the input path before conv1 (data layer, a Slice of a Lab image, the colorization nets' fixed 1x1
"data_l" convolution) and a colour model's ab branch summed into conv1. Layers off these paths (fc8, losses,
label pipelines) are ignored. Whatever the AlexNet family cannot express is refused with the file and the
layer named (`CheckpointMismatchError`).

Folding: Caffe's BatchNorm (+ Scale) after a layer is absorbed into that layer's weights (so the trunk has
``batch_norm=False``); the 1x1 input convolution becomes part of the input convention (an exact per-channel
affine map applied before conv1, so conv1's zero padding stays in the same space as in Caffe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_bench.errors import MissingDataError
from ssl_bench.models.checkpoint import CheckpointMismatchError
from ssl_bench.models.layers import LAYERS
from ssl_bench.weights.caffe_proto import (
    V1_TYPE_NAMES,
    BlobData,
    ProtoDecodeError,
    RawLayer,
    first,
    parse_prototxt,
    read_net_blobs,
)
from ssl_bench.weights.imported import ImportedWeights, InputConvention

__all__ = ["CAFFE_LAYER_TYPES_SUPPORTED", "read_caffe"]

# What the importer understands, by where the layer sits (for the docs and error messages).
CAFFE_LAYER_TYPES_SUPPORTED: dict[str, tuple[str, ...]] = {
    "trunk (conv1..conv5, fc6, fc7)": ("Convolution", "InnerProduct (fc6, fc7)"),
    "after a trunk layer": ("BatchNorm", "Scale", "ReLU", "Dropout (fc6, fc7)", "Pooling MAX (pool1, pool2, pool5)",
                            "LRN (after pool1 and pool2)", "Eltwise SUM (conv1 + an ab branch)", "Flatten", "Split"),
    "before conv1": ("Data", "ImageData", "WindowData", "Input", "DummyData", "MemoryData", "HDF5Data", "Python",
                     "ColorConv (BGR -> Lab)", "Slice (the L channel)", "Convolution 1x1 (fixed input scaling)"),
}
_SOURCES = {"Data", "ImageData", "WindowData", "Input", "DummyData", "MemoryData", "HDF5Data", "Python",
            "AnnotatedData"}
_BGR_SOURCES = {"Data", "ImageData", "WindowData"}  # Caffe decodes images with OpenCV: BGR, 0..255
_LRN = {"local_size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0}  # AlexNet's fixed LRN (models/alexnet.py)
_CHANNELS = {"L": 1, "rgb": 3, "bgr": 3, "lab": 3}


# ------------------------------------------------------------------------------------ the prototxt graph


@dataclass(frozen=True)
class Layer:
    """A prototxt layer: ``params`` is its text message (field -> list of values)."""

    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict[str, list[Any]]

    def param(self, group: str) -> dict[str, list[Any]]:
        return first(self.params, group, {}) or {}


@dataclass(frozen=True)
class Graph:
    """The test-phase layers of a prototxt; ``srcs[i][j]`` = (producer layer, top index) of layer i's bottom
    j, None for a net input. In-place layers (ReLU, Dropout) make a new version of their blob, so following
    producers walks the net in order."""

    path: Path
    layers: tuple[Layer, ...]
    srcs: tuple[tuple[tuple[int, int] | None, ...], ...]
    inputs: tuple[str, ...]

    def index(self, name: str) -> int:
        found = [i for i, layer in enumerate(self.layers) if layer.name == name]
        if not found:
            raise CheckpointMismatchError(f"prototxt {self.path}: no layer named {name!r} (the AlexNet trunk needs "
                                          f"{', '.join(LAYERS)})")
        if len(found) > 1:
            raise CheckpointMismatchError(f"prototxt {self.path}: {len(found)} layers named {name!r} in the test phase")
        return found[0]

    def consumers(self, version: tuple[int, int]) -> list[int]:
        return [i for i, srcs in enumerate(self.srcs) if version in srcs]


def _in_test_phase(msg: dict[str, list[Any]]) -> bool:
    """Caffe's NetStateRule check for phase TEST (stages and levels are not used by the released nets)."""
    def phase(rule: dict[str, list[Any]]) -> str | None:
        value = first(rule, "phase")
        return None if value is None else {0: "TRAIN", 1: "TEST"}.get(value, str(value))
    includes, excludes = msg.get("include", []), msg.get("exclude", [])
    if includes and not any(phase(r) in (None, "TEST") for r in includes):
        return False
    return not any(phase(r) in (None, "TEST") for r in excludes)


def _layer(msg: dict[str, list[Any]], legacy: bool) -> Layer:
    kind = str(first(msg, "type", ""))
    if legacy:
        kind = V1_TYPE_NAMES.get(kind, kind)
    return Layer(str(first(msg, "name", "")), kind, tuple(map(str, msg.get("bottom", []))),
                 tuple(map(str, msg.get("top", []))), msg)


def read_graph(path: Path) -> Graph:
    """Parse a prototxt into its test-phase graph."""
    try:
        net = parse_prototxt(path.read_text(encoding="utf-8", errors="replace"), str(path))
    except ProtoDecodeError as e:
        raise CheckpointMismatchError(f"prototxt {e}") from e
    if net.get("layer") and net.get("layers"):
        raise CheckpointMismatchError(f"prototxt {path}: mixes 'layer' and legacy 'layers' entries")
    legacy = not net.get("layer")
    layers = tuple(_layer(m, legacy) for m in net.get("layer") or net.get("layers") or [] if _in_test_phase(m))
    if not layers:
        raise CheckpointMismatchError(f"prototxt {path}: no layers")
    version: dict[str, tuple[int, int]] = {}
    srcs = []
    for i, layer in enumerate(layers):
        srcs.append(tuple(version.get(b) for b in layer.bottoms))
        for j, top in enumerate(layer.tops):
            version[top] = (i, j)
    return Graph(path, layers, tuple(srcs), tuple(map(str, net.get("input", []))))


def _reaches(g: Graph, version: tuple[int, int] | None, stop: int) -> bool:
    """Whether following producers from ``version`` meets layer ``stop``."""
    seen, todo = set(), [version]
    while todo:
        v = todo.pop()
        if v is None or v[0] in seen:
            continue
        if v[0] == stop:
            return True
        seen.add(v[0])
        todo.extend(g.srcs[v[0]])
    return False


def _between(g: Graph, start: int, stop: int) -> list[Layer]:
    """The layers from trunk layer ``stop`` to trunk layer ``start`` (exclusive, in forward order), following
    ``start``'s input back; an Eltwise continues along the bottom that leads to ``stop``."""
    path, layer = [], g.layers[start]
    version = g.srcs[start][0] if g.srcs[start] else None
    while True:
        if version is None or not _reaches(g, version, stop):
            raise CheckpointMismatchError(f"prototxt {g.path}: layer {layer.name!r} is not fed by "
                                          f"{g.layers[stop].name!r} (the AlexNet trunk is a chain conv1 -> ... -> fc7)")
        if version[0] == stop:
            return path[::-1]
        current = g.layers[version[0]]
        path.append(current)
        if current.type == "Eltwise":
            version = next(v for v in g.srcs[version[0]] if _reaches(g, v, stop))
        elif len(g.srcs[version[0]]) != 1:
            raise CheckpointMismatchError(f"prototxt {g.path}: layer {current.name!r} (type {current.type}) between "
                                          f"{g.layers[stop].name!r} and {layer.name!r} has "
                                          f"{len(g.srcs[version[0]])} inputs; the AlexNet trunk has none such")
        else:
            version = g.srcs[version[0]][0]


_AFTER_FC7 = {"BatchNorm", "Scale", "ReLU", "Dropout", "Split"}


def _after_fc7(g: Graph, fc7: int) -> list[Layer]:
    """fc7's own batch norm / scale / ReLU / dropout: the chain of single consumers of those types."""
    path, version = [], (fc7, 0)
    while True:
        nxt = [i for i in g.consumers(version) if g.layers[i].type in _AFTER_FC7 and len(g.srcs[i]) == 1]
        if len(nxt) != 1:
            return path
        path.append(g.layers[nxt[0]])
        version = (nxt[0], 0)


# ------------------------------------------------------------------------------------ stages


@dataclass
class Stage:
    """A trunk layer and the layers that follow it up to the next trunk layer."""

    name: str
    layer: Layer
    eltwise: Layer | None = None
    bn: Layer | None = None
    scale: Layer | None = None
    dropout: Layer | None = None
    pool: Layer | None = None
    lrn: Layer | None = None


def _stage(g: Graph, name: str, layer: Layer, ops: list[Layer], nxt: str) -> Stage:
    """Match ``ops`` (what follows trunk layer ``name`` up to ``nxt``) against the AlexNet block:
    [Eltwise (conv1)] [BatchNorm] [Scale] ReLU [Dropout (fc6/fc7)] [Pooling [LRN] (conv1, conv2, conv5)]."""
    ops = [op for op in ops if op.type != "Split"]  # Caffe's own fan-out copies: no computation
    stage, pos = Stage(name, layer), 0

    def take(kind: str) -> Layer | None:
        nonlocal pos
        if pos < len(ops) and ops[pos].type == kind:
            pos += 1
            return ops[pos - 1]
        return None

    def found() -> str:
        return f"layer {ops[pos].name!r} (type {ops[pos].type})" if pos < len(ops) else f"{nxt!r}"

    stage.eltwise = take("Eltwise") if name == "conv1" else None
    stage.bn, stage.scale = take("BatchNorm"), take("Scale")
    if take("ReLU") is None:
        raise CheckpointMismatchError(f"prototxt {g.path}: expected a ReLU after {layer.name!r}, found {found()}")
    if name in ("fc6", "fc7"):
        stage.dropout = take("Dropout")
    if name in ("conv1", "conv2", "conv5"):
        if name != "conv5" and pos < len(ops) and ops[pos].type == "LRN":
            raise CheckpointMismatchError(f"prototxt {g.path}: LRN layer {ops[pos].name!r} comes before the pooling "
                                          f"after {layer.name!r}; the AlexNet trunk normalises after pooling "
                                          "(CaffeNet order)")
        stage.pool = take("Pooling")
        if stage.pool is None:
            raise CheckpointMismatchError(f"prototxt {g.path}: expected a max pooling after {layer.name!r}, "
                                          f"found {found()}")
        stage.lrn = take("LRN") if name != "conv5" else None
        take("Flatten")
    if pos < len(ops):
        raise CheckpointMismatchError(f"prototxt {g.path}: layer {ops[pos].name!r} (type {ops[pos].type}) between "
                                      f"{layer.name!r} and {nxt!r} has no counterpart in the AlexNet trunk")
    return stage


def trunk_stages(g: Graph) -> list[Stage]:
    """The seven trunk stages conv1..fc7 of a prototxt graph."""
    idx = [g.index(name) for name in LAYERS]
    stages = []
    for k, name in enumerate(LAYERS):
        layer = g.layers[idx[k]]
        if layer.type not in ("Convolution", "InnerProduct") or (
                layer.type == "InnerProduct" and name not in ("fc6", "fc7")):
            raise CheckpointMismatchError(f"prototxt {g.path}: layer {name!r} has type {layer.type}; the AlexNet "
                                          "trunk needs a Convolution (or an InnerProduct for fc6/fc7)")
        if k + 1 < len(LAYERS):
            ops, nxt = _between(g, idx[k + 1], idx[k]), LAYERS[k + 1]
        else:
            ops, nxt = _after_fc7(g, idx[k]), "the end"
        stages.append(_stage(g, name, layer, ops, nxt))
    return stages


# ------------------------------------------------------------------------------------ geometry


def _pair(p: dict[str, list[Any]], key: str, key_h: str, key_w: str,
          default: int | None) -> tuple[int | None, int | None]:
    """A 2-D size from Caffe's repeated field (one value, or h then w) or its _h/_w forms."""
    values = [int(v) for v in p.get(key, [])]
    h = w = default
    if values:
        h, w = values[0], values[1] if len(values) > 1 else values[0]
    if first(p, key_h) is not None:
        h = int(first(p, key_h))
    if first(p, key_w) is not None:
        w = int(first(p, key_w))
    return h, w


def _square(g: Graph, layer: Layer, what: str, hw: tuple[int | None, int | None]) -> int:
    if hw[0] is None or hw[1] is None:
        raise CheckpointMismatchError(f"prototxt {g.path}: layer {layer.name!r} gives no {what}")
    if hw[0] != hw[1]:
        raise CheckpointMismatchError(f"prototxt {g.path}: layer {layer.name!r} has a {hw[0]}x{hw[1]} {what}; the "
                                      "AlexNet trunk is square")
    return hw[0]


def conv_geometry(g: Graph, layer: Layer) -> dict[str, int]:
    """kernel, stride, pad, dilation, group, num_output of a Convolution (Caffe's defaults filled in)."""
    p = layer.param("convolution_param")
    dilation = [int(d) for d in p.get("dilation", [])] or [1]
    if len(set(dilation)) > 1:
        raise CheckpointMismatchError(f"prototxt {g.path}: layer {layer.name!r} has dilation {dilation}; the AlexNet "
                                      "trunk is square")
    return {"kernel": _square(g, layer, "kernel", _pair(p, "kernel_size", "kernel_h", "kernel_w", None)),
            "stride": _square(g, layer, "stride", _pair(p, "stride", "stride_h", "stride_w", 1)),
            "pad": _square(g, layer, "padding", _pair(p, "pad", "pad_h", "pad_w", 0)),
            "dilation": dilation[0], "group": int(first(p, "group", 1)), "num_output": int(first(p, "num_output", 0))}


def _pool_geometry(g: Graph, layer: Layer) -> dict[str, int]:
    p = layer.param("pooling_param")
    method = first(p, "pool", "MAX")
    if method not in ("MAX", 0):
        raise CheckpointMismatchError(f"prototxt {g.path}: layer {layer.name!r} is {method} pooling; the AlexNet "
                                      "trunk max-pools")
    if _truthy(first(p, "global_pooling", False)):
        raise CheckpointMismatchError(f"prototxt {g.path}: layer {layer.name!r} pools globally; the AlexNet trunk "
                                      "pools 3x3 windows")
    if first(p, "round_mode", "CEIL") not in ("CEIL", 0):
        raise CheckpointMismatchError(f"prototxt {g.path}: layer {layer.name!r} rounds its output size down; "
                                      "the AlexNet trunk follows Caffe's default ceil rounding")
    return {"kernel": _square(g, layer, "kernel", _pair(p, "kernel_size", "kernel_h", "kernel_w", None)),
            "stride": _square(g, layer, "stride", _pair(p, "stride", "stride_h", "stride_w", 1)),
            "pad": _square(g, layer, "padding", _pair(p, "pad", "pad_h", "pad_w", 0))}


def _truthy(value: Any) -> bool:
    return value in (True, 1, "true", "True", "t")


def _expected_geometry(geometry: str, groups: bool, fc6_kernel: int, fc6_dilation: int) -> dict[str, dict]:
    """What `ssl_bench.models.alexnet.AlexNet` computes, per Caffe layer, for these constructor arguments."""
    deploy, g = geometry == "deploy", 2 if groups else 1

    def conv(kernel: int, stride: int, pad: int, dilation: int = 1, group: int = 1) -> dict[str, int]:
        return {"kernel": kernel, "stride": stride, "pad": pad, "dilation": dilation, "group": group}
    pool = {"kernel": 3, "stride": 2, "pad": 0 if deploy else 1}
    return {
        "conv1": conv(11, 4, 0 if deploy else 5), "conv2": conv(5, 1, 2, group=g), "conv3": conv(3, 1, 1),
        "conv4": conv(3, 1, 1, group=g), "conv5": conv(3, 1, 1, group=g),
        "fc6": conv(fc6_kernel, 1, 0, 1) if deploy else conv(fc6_kernel, 1, fc6_dilation * (fc6_kernel - 1) // 2,
                                                             fc6_dilation),
        "fc7": conv(1, 1, 0), "pool1": pool, "pool2": pool, "pool5": {**pool, "stride": 2 if deploy else 1},
    }


def _describe(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def _check_geometry(g: Graph, stages: list[Stage], config: dict[str, Any]) -> None:
    """Every convolution and pooling of the prototxt against the AlexNet configuration ``config``."""
    expected = _expected_geometry(config["geometry"], config["groups"], config["fc6_kernel"], config["fc6_dilation"])
    why = f"the AlexNet trunk ({config['geometry']} geometry, set by conv1's padding)"
    for st in stages:
        if st.layer.type == "Convolution":
            got = {k: v for k, v in conv_geometry(g, st.layer).items() if k != "num_output"}
            if got != expected[st.name]:
                raise CheckpointMismatchError(f"prototxt {g.path}: layer {st.layer.name!r} has {_describe(got)}; "
                                              f"{why} has {_describe(expected[st.name])}")
        if st.pool is not None:
            pool = f"pool{st.name[-1]}"
            got = _pool_geometry(g, st.pool)
            if got != expected[pool]:
                raise CheckpointMismatchError(f"prototxt {g.path}: pooling layer {st.pool.name!r} (after "
                                              f"{st.layer.name!r}) has {_describe(got)}; {why} has "
                                              f"{_describe(expected[pool])}")


def _lrn_flag(g: Graph, stages: list[Stage]) -> bool:
    """Whether both pool1 and pool2 are followed by AlexNet's LRN (one without the other is refused)."""
    norms = [st.lrn for st in stages if st.name in ("conv1", "conv2")]
    if not any(norms):
        return False
    if not all(norms):
        missing = "conv1" if norms[0] is None else "conv2"
        raise CheckpointMismatchError(f"prototxt {g.path}: LRN follows only one of pool1/pool2 (none after "
                                      f"{missing!r}'s pooling); the AlexNet trunk has both or neither")
    for layer in norms:
        p = layer.param("lrn_param")
        got = {"local_size": int(first(p, "local_size", 5)), "alpha": float(first(p, "alpha", 1.0)),
               "beta": float(first(p, "beta", 0.75)), "k": float(first(p, "k", 1.0))}
        region = first(p, "norm_region", "ACROSS_CHANNELS")
        if region not in ("ACROSS_CHANNELS", 0) or any(not math.isclose(got[k], v, rel_tol=1e-6)
                                                       for k, v in _LRN.items()):
            raise CheckpointMismatchError(f"prototxt {g.path}: LRN layer {layer.name!r} has {got} ({region}); the "
                                          f"AlexNet trunk's LRN is {_LRN} across channels")
    return True


def _dropout(g: Graph, stages: list[Stage]) -> float:
    ratios = {st.dropout.name: float(first(st.dropout.param("dropout_param"), "dropout_ratio", 0.5))
              for st in stages if st.dropout is not None}
    if len(set(ratios.values())) > 1:
        raise CheckpointMismatchError(f"prototxt {g.path}: dropout ratios differ ({ratios}); the AlexNet trunk has "
                                      "one dropout probability for fc6 and fc7")
    return next(iter(ratios.values()), 0.0)


# ------------------------------------------------------------------------------------ blobs


@dataclass(frozen=True)
class Model:
    """A caffemodel's blobs by layer name."""

    path: Path
    prototxt: Path
    layers: dict[str, RawLayer]

    def blobs(self, layer: Layer, count: int | tuple[int, ...]) -> tuple[BlobData, ...]:
        raw = self.layers.get(layer.name)
        counts = (count,) if isinstance(count, int) else count
        if raw is None or not raw.blobs:
            raise CheckpointMismatchError(f"caffemodel {self.path}: no weights for layer {layer.name!r} (the prototxt "
                                          f"{self.prototxt} has it)")
        if len(raw.blobs) not in counts:
            raise CheckpointMismatchError(f"caffemodel {self.path}: layer {layer.name!r} has {len(raw.blobs)} blobs; "
                                          f"its prototxt definition needs {' or '.join(map(str, counts))}")
        return raw.blobs

    def array(self, layer: Layer, blob: BlobData, index: int, shape: tuple[int, ...]) -> np.ndarray:
        """Blob ``index`` of ``layer`` as float64 of ``shape``; legacy 4-D blobs (leading 1s) are accepted."""
        got = blob.shape
        if _strip_ones(got) != _strip_ones(shape) or blob.values.size != int(np.prod(shape)):
            raise CheckpointMismatchError(f"caffemodel {self.path}: layer {layer.name!r} blob {index} has shape "
                                          f"{list(got)}; the prototxt {self.prototxt} implies {list(shape)}")
        return blob.values.astype(np.float64).reshape(shape)


def _strip_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    i = 0
    while i < len(shape) and shape[i] == 1:
        i += 1
    return tuple(shape[i:])


def read_model(path: Path, prototxt: Path) -> Model:
    """Decode a caffemodel (layers with blobs only)."""
    try:
        raw = read_net_blobs(path.read_bytes())
    except ProtoDecodeError as e:
        raise CheckpointMismatchError(f"caffemodel {path}: not a readable Caffe NetParameter ({e})") from e
    layers: dict[str, RawLayer] = {}
    for layer in raw:
        if layer.blobs:
            if layer.name in layers:
                raise CheckpointMismatchError(f"caffemodel {path}: two layers named {layer.name!r} carry weights")
            layers[layer.name] = layer
    if not layers:
        raise CheckpointMismatchError(f"caffemodel {path}: holds no layer with weights (truncated, or not a "
                                      "caffemodel)")
    return Model(path, prototxt, layers)


def _layer_weights(g: Graph, m: Model, st: Stage, in_channels: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(weight as a conv kernel out x in/g x k x k, bias, fc6 kernel) of one trunk layer, shapes checked."""
    layer = st.layer
    if layer.type == "InnerProduct":
        p = layer.param("inner_product_param")
        out, bias_term = int(first(p, "num_output", 0)), _truthy(first(p, "bias_term", True))
        blobs = m.blobs(layer, 2 if bias_term else 1)
        side = math.isqrt(max(blobs[0].values.size // max(out, 1) // max(in_channels, 1), 0))
        shape = (out, in_channels * side * side)
        if _truthy(first(p, "transpose", False)):
            weight = m.array(layer, blobs[0], 0, shape[::-1]).T
        else:
            weight = m.array(layer, blobs[0], 0, shape)
        weight = weight.reshape(out, in_channels, side, side)  # Caffe flattens C x H x W in that order
    else:
        geo = conv_geometry(g, layer)
        out, side = geo["num_output"], geo["kernel"]
        bias_term = _truthy(first(layer.param("convolution_param"), "bias_term", True))
        blobs = m.blobs(layer, 2 if bias_term else 1)
        if in_channels % geo["group"]:
            raise CheckpointMismatchError(f"prototxt {g.path}: layer {layer.name!r} has group {geo['group']}, which "
                                          f"does not divide its {in_channels} input channels")
        weight = m.array(layer, blobs[0], 0, (out, in_channels // geo["group"], side, side))
    bias = m.array(layer, blobs[1], 1, (out,)) if bias_term else np.zeros(out)
    return weight, bias, side


def _fold_norm(g: Graph, m: Model, st: Stage, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absorb the stage's BatchNorm (Caffe: blobs mean, variance, moving-average factor) and Scale (gamma[, beta])
    into the layer: y = gamma (W x + b - mean) / sqrt(var + eps) + beta."""
    c = weight.shape[0]
    gain, shift = np.ones(c), np.zeros(c)
    if st.bn is not None:
        if st.eltwise is not None:
            raise CheckpointMismatchError(f"prototxt {g.path}: batch norm {st.bn.name!r} follows the sum of conv1 and "
                                          "an ab branch; only an L trunk without that sum can absorb it")
        blobs = m.blobs(st.bn, 3)
        mean, var = m.array(st.bn, blobs[0], 0, (c,)), m.array(st.bn, blobs[1], 1, (c,))
        factor = float(m.array(st.bn, blobs[2], 2, (1,))[0])
        # Caffe's BatchNormLayer: scale_factor = blobs[2] == 0 ? 0 : 1 / blobs[2]
        norm = 0.0 if factor == 0 else 1.0 / factor
        eps = float(first(st.bn.param("batch_norm_param"), "eps", 1e-5))
        gain = 1.0 / np.sqrt(var * norm + eps)
        shift = -mean * norm * gain
    if st.scale is not None:
        p = st.scale.param("scale_param")
        has_beta = _truthy(first(p, "bias_term", False))
        blobs = m.blobs(st.scale, 2 if has_beta else 1)
        gamma = m.array(st.scale, blobs[0], 0, (c,))
        beta = m.array(st.scale, blobs[1], 1, (c,)) if has_beta else np.zeros(c)
        gain, shift = gain * gamma, shift * gamma + beta
    return weight * gain[:, None, None, None], bias * gain + shift


# ------------------------------------------------------------------------------------ input side


@dataclass
class InputPath:
    """What feeds conv1: the source layer (None = a net input), a Slice/ColorConv, the 1x1 input convolution."""

    source: Layer | None = None
    blob: str = ""
    slice_top: int | None = None
    slice_layer: Layer | None = None
    color_conv: Layer | None = None
    affine: Layer | None = None


def _input_path(g: Graph, conv1: int) -> InputPath:
    info = InputPath(blob=g.layers[conv1].bottoms[0] if g.layers[conv1].bottoms else "")
    index, blob = conv1, info.blob
    version = g.srcs[conv1][0] if g.srcs[conv1] else None
    while version is not None:
        layer = g.layers[version[0]]
        if layer.type == "Convolution" and info.affine is None and info.slice_layer is None:
            info.affine = layer
        elif layer.type == "Slice" and info.slice_layer is None:
            info.slice_layer, info.slice_top = layer, version[1]
        elif layer.type == "ColorConv" and info.color_conv is None:
            info.color_conv = layer
        elif layer.type in _SOURCES and not layer.bottoms:
            info.source = layer
            return info
        elif layer.type != "Split":
            raise CheckpointMismatchError(f"prototxt {g.path}: layer {layer.name!r} (type {layer.type}) feeds conv1; "
                                          "the importer reads a data layer, then optionally ColorConv, a Slice and a "
                                          "1x1 input convolution")
        index = version[0]
        blob = layer.bottoms[0] if layer.bottoms else ""
        version = g.srcs[index][0] if g.srcs[index] else None
    if blob not in g.inputs:
        raise CheckpointMismatchError(f"prototxt {g.path}: layer {g.layers[index].name!r} reads {blob!r}, which no "
                                      "layer or net input defines")
    return info


def _base_convention(g: Graph, info: InputPath) -> InputConvention | None:
    """The convention of the tensor entering the 1x1 input convolution (or conv1), if the prototxt says it."""
    if info.slice_layer is not None:
        p = info.slice_layer.param("slice_param")
        points = [int(v) for v in p.get("slice_point", [])]
        axis = int(first(p, "axis", first(p, "slice_dim", 1)))
        lab = info.color_conv is not None or "lab" in (info.slice_layer.bottoms[0].lower()
                                                       if info.slice_layer.bottoms else "")
        if axis != 1 or points[:1] != [1] or info.slice_top != 0 or not lab:
            raise CheckpointMismatchError(f"prototxt {g.path}: conv1 reads top {info.slice_top} of Slice "
                                          f"{info.slice_layer.name!r} (axis {axis}, slice points {points}); the "
                                          "importer knows the L channel of a Lab image (top 0, slice point 1)")
        return InputConvention("L")
    if info.color_conv is not None:
        raise CheckpointMismatchError(f"prototxt {g.path}: conv1 reads all of ColorConv {info.color_conv.name!r}; "
                                      "pass the input convention explicitly")
    if info.source is None or info.source.type not in _BGR_SOURCES:
        return None
    t = info.source.param("transform_param")
    legacy = info.source.param("data_param") or info.source.param("image_data_param") or \
        info.source.param("window_data_param")
    if first(t, "mean_file") is not None or first(legacy, "mean_file") is not None:
        return None  # a per-pixel mean image: no per-channel convention can express it
    scale = float(first(t, "scale", first(legacy, "scale", 1.0)))
    mean = tuple(float(v) * scale for v in t.get("mean_value", []))
    mean = mean * 3 if len(mean) == 1 else mean  # Caffe: one mean_value is subtracted from every channel
    return InputConvention("bgr", scale=255.0 * scale, mean=mean)


def _compose_affine(g: Graph, m: Model, info: InputPath, base: InputConvention) -> InputConvention:
    """base followed by the 1x1 input convolution a*u + b (per channel, a diagonal kernel):
    a * (x*S - M) + b = (x*S - (M - b/a)) / (1/a)."""
    layer = info.affine
    geo = conv_geometry(g, layer)
    c = _CHANNELS[base.channels]
    if geo["kernel"] != 1 or geo["num_output"] != c or geo["pad"] or geo["stride"] != 1:
        raise CheckpointMismatchError(f"prototxt {g.path}: input layer {layer.name!r} before conv1 is not a 1x1, "
                                      f"stride-1, unpadded convolution from {c} to {c} channel(s)")
    bias_term = _truthy(first(layer.param("convolution_param"), "bias_term", True))
    blobs = m.blobs(layer, 2 if bias_term else 1)
    weight = m.array(layer, blobs[0], 0, (c, c // geo["group"], 1, 1)).reshape(c, -1)
    full = np.zeros((c, c))
    for o in range(c):  # expand the grouped kernel to a full c x c matrix
        per = c // geo["group"]
        full[o, (o // per) * per:(o // per + 1) * per] = weight[o]
    a = np.diag(full)
    b = m.array(layer, blobs[1], 1, (c,)) if bias_term else np.zeros(c)
    if np.any(full - np.diag(a)) or np.any(a == 0):
        raise CheckpointMismatchError(f"caffemodel {m.path}: input layer {layer.name!r} mixes channels or zeroes one; "
                                      "only a per-channel scaling can be expressed as an input convention")
    base_mean = np.array(base.mean if base.mean else (0.0,) * c, dtype=np.float64)
    mean = tuple(float(v) for v in base_mean - b / a)
    std = () if np.all(a == 1) else tuple(float(v) for v in 1.0 / a)
    return InputConvention(base.channels, scale=base.scale, mean=mean, std=std)


def input_convention(g: Graph, m: Model, conv1: int, in_channels: int,
                     given: InputConvention | None) -> tuple[InputConvention, dict[str, Any]]:
    """The input convention of the net and a record of how it was found."""
    info = _input_path(g, conv1)
    record: dict[str, Any] = {"source_layer": info.source.name if info.source else None, "blob": info.blob}
    if info.affine is not None:
        record["input_layer"] = info.affine.name
    if given is not None:
        convention, record["convention_from"] = given, "argument"
    else:
        base = _base_convention(g, info)
        if base is None:
            where = f"layer {info.source.name!r} (type {info.source.type})" if info.source else "a net input"
            raise CheckpointMismatchError(f"prototxt {g.path}: conv1's input comes from {where} with no "
                                          "per-channel mean/scale; pass the input convention explicitly "
                                          "(e.g. bgr, scale 255, mean 104,117,123)")
        convention = _compose_affine(g, m, info, base) if info.affine is not None else base
        record["convention_from"] = "prototxt"
    if _CHANNELS.get(convention.channels) != in_channels:
        raise CheckpointMismatchError(f"prototxt {g.path}: conv1 takes {in_channels} input channel(s) but the input "
                                      f"convention {convention.channels!r} has {_CHANNELS.get(convention.channels)}")
    return convention, record


def _ab_branch(g: Graph, m: Model, st: Stage) -> dict[str, Any]:
    """The weights of the layers on the other inputs of the Eltwise summed into conv1 (a colour model's
    conv1_ab and its fixed ab scaling), kept as they are, with the sum's coefficients."""
    layer, conv1 = st.eltwise, g.index("conv1")
    p = layer.param("eltwise_param")
    if first(p, "operation", "SUM") not in ("SUM", 1) or len(layer.bottoms) != 2:
        raise CheckpointMismatchError(f"prototxt {g.path}: Eltwise {layer.name!r} after conv1 is not a sum of two "
                                      "blobs")
    eltwise = next(i for i, candidate in enumerate(g.layers) if candidate is layer)
    other = next((v for v in g.srcs[eltwise] if not _reaches(g, v, conv1)), None)
    if other is None:
        raise CheckpointMismatchError(f"prototxt {g.path}: Eltwise {layer.name!r} sums conv1 with itself")
    branch: dict[str, list[torch.Tensor]] = {}
    todo = [other]
    while todo:
        v = todo.pop()
        if v is None:
            continue
        upstream = g.layers[v[0]]
        raw = m.layers.get(upstream.name)
        if raw is not None and raw.blobs:
            branch[upstream.name] = [torch.from_numpy(np.array(b.values, np.float32).reshape(b.shape))
                                     for b in raw.blobs]
        todo.extend(g.srcs[v[0]])
    return {"eltwise": layer.name, "coeff": [float(c) for c in p.get("coeff", [])] or [1.0, 1.0],
            "layers": dict(reversed(list(branch.items())))}


# ------------------------------------------------------------------------------------ the importer


def _trunk_weights(g: Graph, m: Model, stages: list[Stage]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """state dict (AlexNet keys, BN folded, float32) and the shapes needed for the trunk's configuration."""
    first_layer = m.blobs(stages[0].layer, (1, 2))[0]
    geo1 = conv_geometry(g, stages[0].layer)
    in_channels = (first_layer.shape[1] if len(first_layer.shape) == 4 else 0) * geo1["group"]
    shapes: dict[str, Any] = {"in_channels": in_channels}
    state: dict[str, torch.Tensor] = {}
    for st in stages:
        weight, bias, side = _layer_weights(g, m, st, in_channels)
        weight, bias = _fold_norm(g, m, st, weight, bias)
        state[f"{st.name}.0.weight"] = torch.from_numpy(weight.astype(np.float32))
        state[f"{st.name}.0.bias"] = torch.from_numpy(bias.astype(np.float32))
        shapes[st.name] = (weight.shape[0], side)
        in_channels = weight.shape[0]
    return state, shapes


def _trunk_config(g: Graph, stages: list[Stage], shapes: dict[str, Any], convention: InputConvention) -> dict:
    by = {st.name: st for st in stages}
    conv1 = conv_geometry(g, by["conv1"].layer)
    geometry = {0: "deploy", 5: "train"}.get(conv1["pad"])
    if geometry is None:
        raise CheckpointMismatchError(f"prototxt {g.path}: layer {by['conv1'].layer.name!r} has pad {conv1['pad']}; "
                                      "the AlexNet trunk has 0 (deploy geometry) or 5 (train geometry)")
    group = conv_geometry(g, by["conv2"].layer)["group"]
    fc6 = by["fc6"].layer
    if fc6.type == "InnerProduct" and geometry == "train":
        raise CheckpointMismatchError(f"prototxt {g.path}: fc6 {fc6.name!r} is an InnerProduct after a padded conv1; "
                                      "the AlexNet train geometry has a convolutional fc6")
    dilation = conv_geometry(g, fc6)["dilation"] if fc6.type == "Convolution" else 1
    widths = [shapes[name][0] for name in LAYERS[:5]]
    if shapes["fc6"][0] != shapes["fc7"][0]:
        raise CheckpointMismatchError(f"prototxt {g.path}: fc6 has {shapes['fc6'][0]} outputs and fc7 "
                                      f"{shapes['fc7'][0]}; the AlexNet trunk has one fc width")
    if group not in (1, 2):
        raise CheckpointMismatchError(f"prototxt {g.path}: conv2 has group {group}; the AlexNet trunk has 1 or 2")
    return {"in_channels": shapes["in_channels"], "widths": widths, "fc_channels": shapes["fc6"][0],
            "fc6_kernel": shapes["fc6"][1], "fc6_dilation": dilation if geometry == "train" else 1,
            "groups": group == 2, "batch_norm": False, "input_space": "L" if convention.channels == "L" else "rgb",
            "geometry": geometry, "lrn": _lrn_flag(g, stages), "dropout": _dropout(g, stages)}


def read_caffe(prototxt: Path, caffemodel: Path, convention: InputConvention | None = None) -> ImportedWeights:
    """Import a Caffe AlexNet-family model.

    Args:
        prototxt: the net definition (train_val or deploy; the TEST phase is read).
        caffemodel: its weights (binary NetParameter, current or legacy V1 layout).
        convention: the input convention, overriding the prototxt's; required when the prototxt does not
            say (a deploy net's bare Input layer). It describes the tensor conv1 reads.
    Returns:
        `ImportedWeights` with an AlexNet configuration (``batch_norm=False``: Caffe's BatchNorm/Scale are
        folded into the weights) and float32 weights under AlexNet's keys; ``extra`` records the Caffe layer
        behind each trunk layer, the input path and a colour model's ab branch (``extra["ab_branch"]``).
    Raises:
        MissingDataError: a file is missing.
        CheckpointMismatchError: unreadable files, a prototxt/caffemodel mismatch, or a net the AlexNet
            family cannot express (the message names the file and the layer).
    """
    prototxt, caffemodel = Path(prototxt), Path(caffemodel)
    for path in (prototxt, caffemodel):
        if not path.is_file():
            raise MissingDataError(f"{path} does not exist")
    g = read_graph(prototxt)
    stages = trunk_stages(g)
    m = read_model(caffemodel, prototxt)
    state, shapes = _trunk_weights(g, m, stages)
    conv, record = input_convention(g, m, g.index("conv1"), shapes["in_channels"], convention)
    config = _trunk_config(g, stages, shapes, conv)
    _check_geometry(g, stages, config)
    extra: dict[str, Any] = {"input": record, "caffe_layers": {
        st.name: {"layer": st.layer.name, "type": st.layer.type, "batch_norm": st.bn.name if st.bn else None,
                  "scale": st.scale.name if st.scale else None} for st in stages}}
    if stages[0].eltwise is not None:
        extra["ab_branch"] = _ab_branch(g, m, stages[0])
    return ImportedWeights(trunk=config, state_dict=state, convention=conv,
                           source=f"{caffemodel} (net {prototxt})", fmt="caffe", extra=extra)
