"""Just enough ONNX protobuf for the device: find initializer bytes, write tiny graphs.

The device runtime does not depend on the `onnx` package (pyproject lists numpy,
onnxruntime, psutil, tokenizers). It needs two things from the format:
- where each base weight's bytes are (inline `raw_data` or external data: file, offset,
  length), so the runtime can read W into buffers it owns and hand them to onnxruntime
  with `add_initializer`: onnxruntime then never loads its own copy (measured here: a
  300 MB model gained 0 MiB RSS instead of 288 MiB);
- a way to write the two-node fold graph (edge_zo/fold.py).
Protobuf wire format: each field is a varint key (field number << 3 | wire type) then a
varint (type 0), 8 bytes (1), a length-prefixed payload (2) or 4 bytes (5).
Field numbers are those of onnx/onnx.proto (ModelProto, GraphProto, TensorProto, ...).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path

# onnx.proto field numbers used below
MODEL_IR_VERSION, MODEL_GRAPH, MODEL_OPSET = 1, 7, 8
GRAPH_NODE, GRAPH_NAME, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT = 1, 2, 5, 11, 12
TENSOR_DIMS, TENSOR_TYPE, TENSOR_NAME, TENSOR_RAW = 1, 2, 8, 9
TENSOR_EXTERNAL, TENSOR_LOCATION = 13, 14
ELEM_TYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 11: "float64"}
ELEM_CODES = {v: k for k, v in ELEM_TYPES.items()}


class ProtoError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtoError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def fields(buf, start: int = 0, end: int | None = None):
    """Yield (field number, wire type, value) where value is an int or (start, end) span."""
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value = (pos, pos + size)
            pos += size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value = (pos, pos + size)
            pos += size
        else:
            raise ProtoError(f"unsupported wire type {wire}")
        if pos > end:
            raise ProtoError("field runs past the end of the message")
        yield number, wire, value


@dataclass
class TensorLocation:
    """Where an initializer's bytes are: inline span of the model file, or an external file."""

    name: str
    dims: tuple[int, ...]
    dtype: str
    file: str | None = None  # None: inline in the model file
    offset: int = 0
    length: int = -1  # -1: to the end of the file (external data without "length")
    external: dict = field(default_factory=dict)


def _tensor(buf, span) -> TensorLocation:
    loc = TensorLocation(name="", dims=(), dtype="")
    dims: list[int] = []
    for number, wire, value in fields(buf, *span):
        if number == TENSOR_DIMS:
            if wire == 2:  # packed
                pos, stop = value
                while pos < stop:
                    dim, pos = _varint(buf, pos)
                    dims.append(dim)
            else:
                dims.append(value)
        elif number == TENSOR_TYPE:
            loc.dtype = ELEM_TYPES.get(value, f"onnx-type-{value}")
        elif number == TENSOR_NAME:
            loc.name = bytes(buf[value[0]:value[1]]).decode()
        elif number == TENSOR_RAW:
            loc.offset, loc.length = value[0], value[1] - value[0]
        elif number == TENSOR_EXTERNAL:
            entry = {k: bytes(buf[v[0]:v[1]]).decode() for k, _, v in fields(buf, *value)}
            loc.external[entry.get(1, "")] = entry.get(2, "")
    loc.dims = tuple(dims)
    if loc.external:
        loc.file = loc.external.get("location")
        loc.offset = int(loc.external.get("offset", 0))
        loc.length = int(loc.external.get("length", -1))
    return loc


def initializer_locations(model_path: str | Path, names) -> dict[str, TensorLocation]:
    """Locations of the named initializers of an ONNX model file (others are skipped)."""
    wanted = set(names)
    found: dict[str, TensorLocation] = {}
    with open(model_path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        for number, wire, graph in fields(buf):
            if number != MODEL_GRAPH or wire != 2:
                continue
            for gnum, gwire, span in fields(buf, *graph):
                if gnum == GRAPH_INITIALIZER and gwire == 2:
                    loc = _tensor(buf, span)
                    if loc.name in wanted:
                        found[loc.name] = loc
    return found


# ---- writing -------------------------------------------------------------------------

def _key(number: int, wire: int) -> bytes:
    return _uvarint(number << 3 | wire)


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int(number: int, value: int) -> bytes:
    return _key(number, 0) + _uvarint(value)


def _bytes(number: int, payload: bytes | str) -> bytes:
    payload = payload.encode() if isinstance(payload, str) else payload
    return _key(number, 2) + _uvarint(len(payload)) + payload


def value_info(name: str, dtype: str, dims) -> bytes:
    """ValueInfoProto: a tensor with named (str) or fixed (int) dimensions."""
    dim_msgs = b"".join(_bytes(1, _int(1, d) if isinstance(d, int) else _bytes(2, d)) for d in dims)
    tensor_type = _int(1, ELEM_CODES[dtype]) + _bytes(2, dim_msgs)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def node(op_type: str, inputs, outputs, **int_attrs) -> bytes:
    """NodeProto with integer attributes only (AttributeProto type INT = 2)."""
    attrs = b"".join(_bytes(5, _bytes(1, k) + _int(3, v) + _int(20, 2)) for k, v in int_attrs.items())
    return (b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs)
            + _bytes(4, op_type) + attrs)


def model(nodes, inputs, outputs, opset: int = 18, ir_version: int = 8) -> bytes:
    """ModelProto bytes for a graph of `nodes` (from `node`) with `value_info` inputs/outputs.

    Opset 18 / IR 8 load on every onnxruntime this project supports (1.15 and later).
    """
    graph = (b"".join(_bytes(GRAPH_NODE, n) for n in nodes) + _bytes(GRAPH_NAME, "edge_zo")
             + b"".join(_bytes(GRAPH_INPUT, i) for i in inputs)
             + b"".join(_bytes(GRAPH_OUTPUT, o) for o in outputs))
    opset_id = _bytes(1, "") + _int(2, opset)
    return _int(MODEL_IR_VERSION, ir_version) + _bytes(MODEL_OPSET, opset_id) + _bytes(MODEL_GRAPH, graph)
