"""Test-only .caffemodel writer: protocol buffers wire format encoded by hand, independent of the suite's
decoder. Field numbers from BVLC Caffe's caffe.proto:

- NetParameter: name = 1, layers = 2 (V1LayerParameter, legacy), layer = 100 (LayerParameter)
- LayerParameter: name = 1, type = 2, bottom = 3, top = 4, blobs = 7, convolution_param = 106
- V1LayerParameter: bottom = 2, top = 3, name = 4, type = 5 (enum LayerType), blobs = 6, convolution_param = 10
- BlobProto: num = 1, channels = 2, height = 3, width = 4, data = 5 (packed floats), shape = 7 (BlobShape: dim = 1)
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

# V1LayerParameter.LayerType numbers of the layer types these tests write
V1_ENUM = {"Convolution": 4, "InnerProduct": 14, "Data": 5, "ReLU": 18, "Pooling": 17, "LRN": 15, "Dropout": 6}


def varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64: two's complement, 10 bytes
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def tag(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def f_varint(field: int, n: int) -> bytes:
    return tag(field, 0) + varint(n)


def f_bytes(field: int, payload: bytes) -> bytes:
    return tag(field, 2) + varint(len(payload)) + payload


def f_string(field: int, s: str) -> bytes:
    return f_bytes(field, s.encode())


def blob(array: np.ndarray, legacy_dims: bool = False, packed: bool = True) -> bytes:
    """A BlobProto: dims as ``shape`` (field 7) or the legacy num/channels/height/width (left-padded with 1s);
    data packed (one length-delimited field) or unpacked (one fixed32 field per value)."""
    values = np.asarray(array, dtype=np.float32).ravel()
    if legacy_dims:
        dims = (1,) * (4 - array.ndim) + tuple(array.shape)
        head = b"".join(f_varint(i + 1, d) for i, d in enumerate(dims))
    else:
        head = f_bytes(7, f_bytes(1, b"".join(varint(d) for d in array.shape)))  # BlobShape.dim, packed
    if packed:
        data = f_bytes(5, struct.pack(f"<{values.size}f", *values.tolist()))
    else:
        data = b"".join(tag(5, 5) + struct.pack("<f", v) for v in values.tolist())
    return head + data


def layer(name: str, kind: str, arrays: list[np.ndarray], v1: bool = False, legacy_dims: bool = False,
          packed: bool = True) -> bytes:
    """One layer message with its blobs, plus fields the importer must skip (a convolution_param, an unknown
    fixed64 and an unknown varint field)."""
    skipped = tag(901, 1) + struct.pack("<d", 3.5) + f_varint(902, 7)
    if v1:
        return (f_string(4, name) + f_varint(5, V1_ENUM[kind]) + f_string(2, "bottom") + f_string(3, name)
                + b"".join(f_bytes(6, blob(a, legacy_dims, packed)) for a in arrays)
                + f_bytes(10, f_varint(1, 3)) + skipped)
    return (f_string(1, name) + f_string(2, kind) + f_string(3, "bottom") + f_string(4, name)
            + b"".join(f_bytes(7, blob(a, legacy_dims, packed)) for a in arrays)
            + f_bytes(106, f_varint(1, 3)) + skipped)


def write_caffemodel(path: Path, layers: list[tuple[str, str, list[np.ndarray]]], v1: bool = False,
                     legacy_dims: bool = False, packed: bool = True) -> Path:
    """A NetParameter with ``layers`` (name, type, blobs) in the current (field 100) or legacy V1 (field 2)
    list."""
    body = f_string(1, "TestNet")
    field = 2 if v1 else 100
    for name, kind, arrays in layers:
        body += f_bytes(field, layer(name, kind, arrays, v1, legacy_dims, packed))
    path.write_bytes(body)
    return path
