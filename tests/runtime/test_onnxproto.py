"""The minimal protobuf reader/writer agrees with the `onnx` package."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from edge_zo import fold, onnxproto

from . import fixtures


def test_fold_graphs_are_valid_onnx_and_compute_w_plus_a_c():
    for dtype in ("float32", "float16"):
        model = onnx.load_from_string(fold.fold_model(dtype))
        onnx.checker.check_model(model, full_check=True)
        session = ort.InferenceSession(fold.fold_model(dtype), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal((5, 2), dtype=np.float32), rng.standard_normal((2, 3), dtype=np.float32)
        w = rng.standard_normal((5, 3)).astype(dtype)
        (y,) = session.run(None, {"a": a, "b": b, "w": w})
        assert y.dtype == np.dtype(dtype)
        np.testing.assert_allclose(y, (w.astype(np.float32) + a @ b).astype(dtype), rtol=1e-3 if dtype == "float16" else 1e-6)
    assert [n.op_type for n in onnx.load_from_string(fold.fold_model()).graph.node] == ["Gemm"]


def test_initializer_locations_match_onnx(tmp_path):
    for external in (False, True):
        tiny = fixtures.build(tmp_path / str(external), external=external)
        model = onnx.load(tiny.path / "model.onnx", load_external_data=False)
        names = [i.name for i in model.graph.initializer]
        found = onnxproto.initializer_locations(tiny.path / "model.onnx", names)
        assert set(found) == set(names)
        for init in model.graph.initializer:
            loc = found[init.name]
            assert loc.dims == tuple(init.dims) and loc.dtype == np.dtype(
                onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).name
        for name, w in tiny.weights.items():
            loc = found[name]
            path = tiny.path / loc.file if loc.file else tiny.path / "model.onnx"
            got = np.fromfile(path, np.float32, w.size, offset=loc.offset).reshape(w.shape)
            np.testing.assert_array_equal(got, w)
            if not external:
                np.testing.assert_array_equal(numpy_helper.to_array(
                    next(i for i in model.graph.initializer if i.name == name)), got)
