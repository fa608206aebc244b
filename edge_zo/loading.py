"""Opening a bundle on the device: read the base weights, check the graph against the manifest.

Base weights W are graph inputs (DESIGN.md section 3); their values come either from a
record in the manifest ({location, offset, length} into model.onnx.data, what `edge_zo_export/`
writes, so onnxruntime never sees them) or from an initializer of the same name in the
model (an "overridable initializer", what tests/runtime/fixtures.py writes). Each is read
once into an array the runtime owns; nothing else keeps a copy. Every failure is a
BundleError naming the file and the input, which the CLI prints without a traceback.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from edge_zo import onnxproto
from edge_zo.bundle import BundleError, Manifest, TrainedMatrix

ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}


def manifest_record(mat: TrainedMatrix) -> dict | None:
    """The {location, offset, length} record of W's bytes, when the manifest carries one."""
    for f in dataclasses.fields(mat):
        value = getattr(mat, f.name)
        if isinstance(value, dict) and {"location", "offset"} <= set(value):
            return value
    return None


def read_weights(bundle_dir: Path, manifest: Manifest) -> tuple[dict[str, np.ndarray], set[str]]:
    """(matrix name -> W in stored layout, graph names of W that are model initializers)."""
    records, initializer_names = locate_weights(bundle_dir, manifest)
    model_path = bundle_dir / manifest.model_file
    return {m.name: read_tensor(bundle_dir, model_path, records[m.name], m) for m in manifest.matrices
            if m.name in records}, initializer_names


def locate_weights(bundle_dir: Path, manifest: Manifest) -> tuple[dict[str, dict], set[str]]:
    """(matrix name -> {location, offset, length} of its W, graph names of W that are model
    initializers): where each W lies, checked against the manifest, nothing read yet.
    A quantized bundle's low-rank matrices have no W input (their base is in the graph)."""
    model_path = bundle_dir / manifest.model_file
    with_w = [m for m in manifest.matrices if "W" in m.inputs]
    pending = {m.inputs["W"]: m for m in with_w if manifest_record(m) is None}
    try:
        found = onnxproto.initializer_locations(model_path, pending) if pending else {}
    except (onnxproto.ProtoError, ValueError, OSError) as err:
        raise BundleError(f"{model_path}: not a readable ONNX model ({err}); "
                          "the file is damaged or truncated: re-export or copy it again") from None
    records = {}
    for mat in with_w:
        graph_name = mat.inputs["W"]
        record = manifest_record(mat)
        if record is None:
            if graph_name not in found:
                raise BundleError(f"{model_path}: no base weights for graph input {graph_name!r} "
                                  f"(matrix {mat.name}): neither the manifest nor the model holds them")
            loc = found[graph_name]
            record = {"location": loc.file, "offset": loc.offset, "length": loc.length}
            if loc.dims != mat.stored_shape or loc.dtype != mat.dtype:
                raise BundleError(f"{model_path}: initializer {graph_name!r} is {loc.dtype} {list(loc.dims)}, "
                                  f"the manifest says {mat.dtype} {list(mat.stored_shape)}")
        records[mat.name] = record
    return records, set(found)


def read_tensor(bundle_dir: Path, model_path: Path, record: dict, mat: TrainedMatrix) -> np.ndarray:
    """Matrix `mat`'s W (stored layout) from the bytes `record` points at."""
    path = bundle_dir / record["location"] if record.get("location") else model_path
    dtype = np.dtype(mat.dtype)
    count = int(np.prod(mat.stored_shape))
    offset = int(record.get("offset", 0))
    length = int(record.get("length", -1))
    if length not in (-1, count * dtype.itemsize):
        raise BundleError(f"{path}: {mat.inputs['W']} has {length} bytes, expected "
                          f"{count * dtype.itemsize} for {mat.dtype} {list(mat.stored_shape)}")
    if not path.is_file():
        raise BundleError(f"{path}: missing; it holds the base weights of {mat.name}")
    if path.stat().st_size < offset + count * dtype.itemsize:
        raise BundleError(f"{path}: truncated ({path.stat().st_size} bytes); {mat.inputs['W']} "
                          f"needs bytes {offset}..{offset + count * dtype.itemsize}")
    return np.fromfile(path, dtype=dtype, count=count, offset=offset).reshape(mat.stored_shape)


def _describe(arg) -> tuple[str, list]:
    return ORT_TYPES.get(arg.type, arg.type), list(arg.shape)


def _fits(actual: list, expected: list) -> bool:
    """Graph dims that are fixed ints must equal the expected ones; named dims fit anything."""
    return len(actual) == len(expected) and all(
        not isinstance(a, int) or e is None or a == e for a, e in zip(actual, expected))


def expected_inputs(manifest: Manifest) -> dict[str, tuple[str, list]]:
    """graph input name -> (dtype, shape; None = free), from the manifest alone.

    B, T and P stay free: sequence length is checked per batch (`set_batch`).
    """
    target = ("labels", "int64", [None]) if manifest.task == "classification" else \
        ("loss_mask", "float32", [None, None])
    expected = {"input_ids": ("int64", [None, None]), "attention_mask": ("int64", [None, None]),
                target[0]: (target[1], target[2])}
    for mat in manifest.matrices:
        m, n = mat.shape
        if "W" in mat.inputs:
            expected[mat.inputs["W"]] = (mat.dtype, list(mat.stored_shape))
        if "U" in mat.inputs:  # a quantized base's adapter
            expected[mat.inputs["U"]] = ("float32", [m, manifest.adapter_rank])
            expected[mat.inputs["V"]] = ("float32", [manifest.adapter_rank, n])
        if "A" in mat.inputs:  # a low-rank graph's matrices, except a dense head
            expected[mat.inputs["A"]] = ("float32", [m, manifest.rank])
            expected[mat.inputs["D"]] = ("float32", [None, manifest.rank, n])
    return expected


def check_graph(session, manifest: Manifest, model_path: Path) -> int | None:
    """Raise BundleError where graph and manifest disagree; return a fixed P (or None)."""
    # get_inputs() leaves out overridable initializers (W with a default value in the model)
    args = list(session.get_inputs()) + list(session.get_overridable_initializers())
    actual = {arg.name: _describe(arg) for arg in args}
    expected = expected_inputs(manifest)
    for name in sorted(set(expected) - set(actual)):
        raise BundleError(f"{model_path}: the manifest names graph input {name!r}, the graph has no such input")
    for name in sorted(set(actual) - set(expected)):
        raise BundleError(f"{model_path}: graph input {name!r} is not described by the manifest")
    for name, (dtype, shape) in expected.items():
        got_type, got_shape = actual[name]
        if got_type != dtype or not _fits(got_shape, shape):
            raise BundleError(f"{model_path}: graph input {name!r} is {got_type} {got_shape}, "
                              f"the manifest implies {dtype} {shape}")
    outputs = {arg.name for arg in session.get_outputs()}
    for name in ("loss", "scores"):
        if name not in outputs:
            raise BundleError(f"{model_path}: the graph has no output {name!r} (it has {sorted(outputs)})")
    if manifest.graph != "lowrank":
        return None
    fixed = {actual[m.inputs["D"]][1][0] for m in manifest.matrices if "D" in m.inputs} - {None}
    fixed = {p for p in fixed if isinstance(p, int)}
    if len(fixed) > 1 or (fixed and fixed != {manifest.probe_slots}):
        raise BundleError(f"{model_path}: D inputs have probe axis {sorted(fixed)}, "
                          f"the manifest says probe_slots {manifest.probe_slots}")
    return fixed.pop() if fixed else None
