"""Caffe's two file formats without Caffe or the ``protobuf`` package.

- ``.caffemodel``: a binary ``NetParameter`` (protocol buffers wire format). `read_net_blobs` decodes the
  layers' names, types and blobs, in both the current ``layer`` list and the legacy ``layers`` list.
- ``.prototxt``: the protocol buffers text format. `parse_prototxt` turns it into nested dicts.

Field numbers are those of BVLC Caffe's ``src/caffe/proto/caffe.proto``; each schema below cites the message.
Unknown fields are skipped by wire type, so files written by Caffe forks with extra fields decode too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BlobData", "ProtoDecodeError", "RawLayer", "V1_LAYER_TYPES", "V1_TYPE_NAMES", "decode_message", "first",
           "parse_prototxt", "read_net_blobs"]


class ProtoDecodeError(ValueError):
    """The bytes are not a valid protocol buffers message (truncated, or a wire type that does not fit)."""


# ------------------------------------------------------------------------------------ wire format

# wire types (protocol buffers encoding): 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """(value, next position) of the base-128 varint at ``pos``."""
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ProtoDecodeError(f"truncated varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtoDecodeError(f"varint longer than 10 bytes at byte {pos}")


def _signed64(value: int) -> int:
    """int64 fields carry negative numbers as 64-bit two's complement varints."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _fields(buf: memoryview) -> list[tuple[int, int, Any]]:
    """(field number, wire type, payload) for every field of one message; payload = int or memoryview."""
    out, pos, end = [], 0, len(buf)
    while pos < end:
        start = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtoDecodeError(f"field number 0 at byte {start}")
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            if pos + size > end:
                raise ProtoDecodeError(f"truncated fixed{size * 8} field {number} at byte {start}")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == _LEN:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise ProtoDecodeError(f"truncated field {number}: {size} bytes announced at byte {start}, "
                                       f"{end - pos} left")
            value, pos = buf[pos:pos + size], pos + size
        else:  # 3/4 are the deprecated groups, 6/7 do not exist: Caffe never writes them
            raise ProtoDecodeError(f"unsupported wire type {wire} (field {number}) at byte {start}")
        out.append((number, wire, value))
    return out


@dataclass(frozen=True)
class Field:
    """One schema entry: the name to store it under and its kind ("uint", "int64", "bool", "string",
    "float", "double" or "message"); ``schema`` is the sub-message's schema."""

    name: str
    kind: str
    schema: dict[int, Field] | None = None


def _scalar(field: Field, wire: int, value: Any) -> list[Any]:
    """The decoded value(s) of one occurrence of a field (a packed occurrence holds several)."""
    kind = field.kind
    if kind == "message":
        return [decode_message(value, field.schema or {})]
    if kind == "string":
        return [bytes(value).decode("utf-8", errors="replace")]
    if kind in ("float", "double"):
        fmt, size, fixed = ("<f4", 4, _FIXED32) if kind == "float" else ("<f8", 8, _FIXED64)
        if wire == fixed:
            return [np.frombuffer(value, dtype=fmt)]
        if wire == _LEN:  # packed: repeated float data = 5 [packed = true]
            if len(value) % size:
                raise ProtoDecodeError(f"packed {kind} field {field.name!r}: {len(value)} bytes is not a "
                                       f"multiple of {size}")
            return [np.frombuffer(value, dtype=fmt)]
        raise ProtoDecodeError(f"field {field.name!r}: wire type {wire} does not fit a {kind}")
    # varint kinds: one value, or a packed run of them (repeated int64 dim = 1 [packed = true])
    if wire == _VARINT:
        raw = [value]
    elif wire == _LEN:
        raw, pos = [], 0
        while pos < len(value):
            v, pos = _varint(value, pos)
            raw.append(v)
    else:
        raise ProtoDecodeError(f"field {field.name!r}: wire type {wire} does not fit a {kind}")
    if kind == "int64":
        return [_signed64(v) for v in raw]
    if kind == "bool":
        return [bool(v) for v in raw]
    return raw


def decode_message(buf: bytes | memoryview, schema: dict[int, Field]) -> dict[str, list[Any]]:
    """Decode one message: field name -> list of values (repeated or not; float fields as numpy chunks).

    Fields missing from ``schema`` are skipped; their framing is still checked.
    """
    view = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf
    out: dict[str, list[Any]] = {}
    for number, wire, value in _fields(view):
        field = schema.get(number)
        if field is not None:
            out.setdefault(field.name, []).extend(_scalar(field, wire, value))
    return out


# ------------------------------------------------------------------------------------ caffe.proto schemas

# message BlobShape { repeated int64 dim = 1 [packed = true]; }
BLOB_SHAPE = {1: Field("dim", "int64")}
# message BlobProto { shape = 7; data = 5; double_data = 8; num = 1; channels = 2; height = 3; width = 4; }
# (diff = 6 and double_diff = 9 are gradients: not read)
BLOB_PROTO = {7: Field("shape", "message", BLOB_SHAPE), 5: Field("data", "float"), 8: Field("double_data", "double"),
              1: Field("num", "int64"), 2: Field("channels", "int64"), 3: Field("height", "int64"),
              4: Field("width", "int64")}
# message ConvolutionParameter { num_output = 1; bias_term = 2; pad = 3; kernel_size = 4; group = 5;
#   stride = 6; pad_h = 9; pad_w = 10; kernel_h = 11; kernel_w = 12; stride_h = 13; stride_w = 14; dilation = 18; }
CONVOLUTION_PARAMETER = {1: Field("num_output", "uint"), 2: Field("bias_term", "bool"), 3: Field("pad", "uint"),
                         4: Field("kernel_size", "uint"), 5: Field("group", "uint"), 6: Field("stride", "uint"),
                         9: Field("pad_h", "uint"), 10: Field("pad_w", "uint"), 11: Field("kernel_h", "uint"),
                         12: Field("kernel_w", "uint"), 13: Field("stride_h", "uint"), 14: Field("stride_w", "uint"),
                         18: Field("dilation", "uint")}
# message PoolingParameter { pool = 1; kernel_size = 2; stride = 3; pad = 4; kernel_h = 5; kernel_w = 6;
#   stride_h = 7; stride_w = 8; pad_h = 9; pad_w = 10; global_pooling = 12; }
POOLING_PARAMETER = {1: Field("pool", "uint"), 2: Field("kernel_size", "uint"), 3: Field("stride", "uint"),
                     4: Field("pad", "uint"), 5: Field("kernel_h", "uint"), 6: Field("kernel_w", "uint"),
                     7: Field("stride_h", "uint"), 8: Field("stride_w", "uint"), 9: Field("pad_h", "uint"),
                     10: Field("pad_w", "uint"), 12: Field("global_pooling", "bool")}
# message InnerProductParameter { num_output = 1; bias_term = 2; axis = 5; transpose = 6; }
INNER_PRODUCT_PARAMETER = {1: Field("num_output", "uint"), 2: Field("bias_term", "bool"), 5: Field("axis", "int64"),
                           6: Field("transpose", "bool")}
# message LRNParameter { local_size = 1; alpha = 2; beta = 3; norm_region = 4; k = 5; }
LRN_PARAMETER = {1: Field("local_size", "uint"), 2: Field("alpha", "float"), 3: Field("beta", "float"),
                 4: Field("norm_region", "uint"), 5: Field("k", "float")}
# message BatchNormParameter { use_global_stats = 1; moving_average_fraction = 2; eps = 3; }
BATCH_NORM_PARAMETER = {1: Field("use_global_stats", "bool"), 2: Field("moving_average_fraction", "float"),
                        3: Field("eps", "float")}
# message LayerParameter { name = 1; type = 2; bottom = 3; top = 4; blobs = 7; convolution_param = 106;
#   inner_product_param = 117; lrn_param = 118; pooling_param = 121; batch_norm_param = 139; }
LAYER_PARAMETER = {1: Field("name", "string"), 2: Field("type", "string"), 3: Field("bottom", "string"),
                   4: Field("top", "string"), 7: Field("blobs", "message", BLOB_PROTO),
                   106: Field("convolution_param", "message", CONVOLUTION_PARAMETER),
                   117: Field("inner_product_param", "message", INNER_PRODUCT_PARAMETER),
                   118: Field("lrn_param", "message", LRN_PARAMETER),
                   121: Field("pooling_param", "message", POOLING_PARAMETER),
                   139: Field("batch_norm_param", "message", BATCH_NORM_PARAMETER)}
# message V1LayerParameter { bottom = 2; top = 3; name = 4; type = 5 (enum LayerType); blobs = 6;
#   convolution_param = 10; inner_product_param = 17; lrn_param = 18; pooling_param = 19; }
V1_LAYER_PARAMETER = {2: Field("bottom", "string"), 3: Field("top", "string"), 4: Field("name", "string"),
                      5: Field("type", "uint"), 6: Field("blobs", "message", BLOB_PROTO),
                      10: Field("convolution_param", "message", CONVOLUTION_PARAMETER),
                      17: Field("inner_product_param", "message", INNER_PRODUCT_PARAMETER),
                      18: Field("lrn_param", "message", LRN_PARAMETER),
                      19: Field("pooling_param", "message", POOLING_PARAMETER)}
# message NetParameter { name = 1; layers = 2 (V1LayerParameter, deprecated); layer = 100 (LayerParameter); }
NET_PARAMETER = {1: Field("name", "string"), 2: Field("layers", "message", V1_LAYER_PARAMETER),
                 100: Field("layer", "message", LAYER_PARAMETER)}

# V1LayerParameter.LayerType: (enum number, enum name, the LayerParameter type string). The enum name is what a
# legacy ``layers { type: CONVOLUTION }`` prototxt writes; the number is what a legacy caffemodel stores.
_V1_TYPES = (
    (0, "NONE", "NONE"), (35, "ABSVAL", "AbsVal"), (1, "ACCURACY", "Accuracy"), (30, "ARGMAX", "ArgMax"),
    (2, "BNLL", "BNLL"), (3, "CONCAT", "Concat"), (37, "CONTRASTIVE_LOSS", "ContrastiveLoss"),
    (4, "CONVOLUTION", "Convolution"), (5, "DATA", "Data"), (39, "DECONVOLUTION", "Deconvolution"),
    (6, "DROPOUT", "Dropout"), (32, "DUMMY_DATA", "DummyData"), (7, "EUCLIDEAN_LOSS", "EuclideanLoss"),
    (25, "ELTWISE", "Eltwise"), (38, "EXP", "Exp"), (8, "FLATTEN", "Flatten"), (9, "HDF5_DATA", "HDF5Data"),
    (10, "HDF5_OUTPUT", "HDF5Output"), (28, "HINGE_LOSS", "HingeLoss"), (11, "IM2COL", "Im2col"),
    (12, "IMAGE_DATA", "ImageData"), (13, "INFOGAIN_LOSS", "InfogainLoss"), (14, "INNER_PRODUCT", "InnerProduct"),
    (15, "LRN", "LRN"), (29, "MEMORY_DATA", "MemoryData"),
    (16, "MULTINOMIAL_LOGISTIC_LOSS", "MultinomialLogisticLoss"), (34, "MVN", "MVN"), (17, "POOLING", "Pooling"),
    (26, "POWER", "Power"), (18, "RELU", "ReLU"), (19, "SIGMOID", "Sigmoid"),
    (27, "SIGMOID_CROSS_ENTROPY_LOSS", "SigmoidCrossEntropyLoss"), (36, "SILENCE", "Silence"),
    (20, "SOFTMAX", "Softmax"), (21, "SOFTMAX_LOSS", "SoftmaxWithLoss"), (22, "SPLIT", "Split"),
    (33, "SLICE", "Slice"), (23, "TANH", "TanH"), (24, "WINDOW_DATA", "WindowData"), (31, "THRESHOLD", "Threshold"),
)
V1_LAYER_TYPES: dict[int, str] = {number: kind for number, _, kind in _V1_TYPES}
V1_TYPE_NAMES: dict[str, str] = {enum: kind for _, enum, kind in _V1_TYPES}


@dataclass(frozen=True)
class BlobData:
    """One decoded BlobProto: ``values`` (float32 or float64, flat) and its ``shape`` (from ``shape.dim``,
    else the legacy num/channels/height/width)."""

    values: np.ndarray
    shape: tuple[int, ...]

    def array(self) -> np.ndarray:
        """The blob as an array of its own shape (a count mismatch raises ProtoDecodeError)."""
        count = int(np.prod(self.shape)) if self.shape else 1
        if self.values.size != count:
            raise ProtoDecodeError(f"blob of shape {self.shape} holds {self.values.size} values, expected {count}")
        return self.values.reshape(self.shape)


@dataclass(frozen=True)
class RawLayer:
    """A layer of a binary NetParameter: its name, type string and blobs."""

    name: str
    type: str
    blobs: tuple[BlobData, ...]


def _blob(msg: dict[str, list[Any]]) -> BlobData:
    chunks = msg.get("data") or msg.get("double_data") or []
    values = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if msg.get("shape"):
        shape = tuple(int(d) for d in msg["shape"][-1].get("dim", []))
    else:  # legacy 4-D blob: absent dimensions default to 0 in caffe.proto; Caffe reads them as 1
        shape = tuple(int((msg.get(k) or [1])[-1]) for k in ("num", "channels", "height", "width"))
    return BlobData(values, shape)


def read_net_blobs(data: bytes) -> list[RawLayer]:
    """The layers of a binary NetParameter (both ``layer`` = 100 and legacy ``layers`` = 2), in file order."""
    net = decode_message(data, NET_PARAMETER)
    layers = []
    for msg in net.get("layer", []):
        layers.append(RawLayer(first(msg, "name", ""), first(msg, "type", ""),
                               tuple(_blob(b) for b in msg.get("blobs", []))))
    for msg in net.get("layers", []):
        kind = int(first(msg, "type", 0))
        layers.append(RawLayer(first(msg, "name", ""), V1_LAYER_TYPES.get(kind, f"V1 type {kind}"),
                               tuple(_blob(b) for b in msg.get("blobs", []))))
    return layers


def first(msg: dict[str, list[Any]], key: str, default: Any = None) -> Any:
    """The last occurrence of an optional field (protocol buffers: the last one wins), or ``default``."""
    values = msg.get(key)
    return values[-1] if values else default


# ------------------------------------------------------------------------------------ text format

_TOKEN = re.compile(r"""
    \s+ | \#[^\n]*                                   # blanks and comments: skipped
  | (?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')  # string literals, either quote
  | (?P<word>[A-Za-z0-9_.+\-]+)                      # identifiers, numbers, enum values
  | (?P<punct>[{}\[\]:,;<>])
""", re.VERBOSE)
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?|inf|nan)[fF]?$")
_CLOSE = {"{": "}", "<": ">"}


def _tokens(text: str, source: str) -> list[tuple[str, str, int]]:
    """(kind, text, line) tokens; kind is "str", "word" or "punct"."""
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            line = text.count("\n", 0, pos) + 1
            raise ProtoDecodeError(f"{source}:{line}: unexpected character {text[pos]!r}")
        if m.lastgroup:
            out.append((m.lastgroup, m.group(m.lastgroup), text.count("\n", 0, pos) + 1))
        pos = m.end()
    return out


def _value(kind: str, text: str) -> Any:
    """A scalar token's Python value: numbers as int/float, strings unquoted, identifiers as str."""
    if kind == "str":
        return bytes(text[1:-1], "utf-8").decode("unicode_escape")
    if _NUMBER.match(text):
        body = text.rstrip("fF") if not text.lower().endswith("inf") else text
        try:
            return int(body)
        except ValueError:
            return float(body)
    return text


class _TextParser:
    def __init__(self, text: str, source: str) -> None:
        self.toks, self.i, self.source = _tokens(text, source), 0, source

    def error(self, what: str) -> ProtoDecodeError:
        line = self.toks[min(self.i, len(self.toks) - 1)][2] if self.toks else 1
        return ProtoDecodeError(f"{self.source}:{line}: {what}")

    def peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None:
            raise self.error("unexpected end of file")
        self.i += 1
        return tok

    def message(self, close: str | None) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        while True:
            tok = self.peek()
            if tok is None:
                if close is not None:
                    raise self.error(f"missing {close!r}")
                return out
            if tok[0] == "punct" and tok[1] == close:
                self.i += 1
                return out
            if tok[0] == "punct" and tok[1] in ",;":  # optional field separators
                self.i += 1
                continue
            kind, name, _ = self.take()
            if kind != "word":
                raise self.error(f"expected a field name, got {name!r}")
            out.setdefault(name, []).extend(self.field_value(name))

    def field_value(self, name: str) -> list[Any]:
        kind, text, _ = self.take()
        colon = kind == "punct" and text == ":"
        if colon:
            kind, text, _ = self.take()
        if kind == "punct" and text in _CLOSE:
            return [self.message(_CLOSE[text])]
        if not colon:
            raise self.error(f"expected ':' or '{{' after {name!r}")
        if kind == "punct" and text == "[":  # list syntax: dim: [1, 3, 227, 227]
            return self.list_value(name)
        if kind == "punct":
            raise self.error(f"expected a value for {name!r}, got {text!r}")
        return [_value(kind, text)]

    def list_value(self, name: str) -> list[Any]:
        values = []
        while True:
            kind, text, _ = self.take()
            if kind == "punct" and text == "]":
                return values
            if kind == "punct" and text == ",":
                continue
            if kind == "punct" and text in _CLOSE:
                values.append(self.message(_CLOSE[text]))
            elif kind == "punct":
                raise self.error(f"unexpected {text!r} in the list of {name!r}")
            else:
                values.append(_value(kind, text))


def parse_prototxt(text: str, source: str = "<prototxt>") -> dict[str, list[Any]]:
    """The protocol buffers text format as nested dicts: field name -> list of values (sub-messages are
    dicts, numbers int/float, enum values and identifiers str). ``source`` names the file in errors."""
    return _TextParser(text, source).message(None)
