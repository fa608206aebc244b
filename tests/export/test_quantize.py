"""edge_zo_export/quantize.py's operands against onnxruntime's own kernels, and adapter.absorb's cut.

Each quantized form is run as a one-node graph by onnxruntime and compared with numpy's
x · dequantize(quantize(W)): a wrong packing order, scale axis or zero point shows up as an
O(1) error, far above the kernels' own rounding (x is quantized inside int8 kernels).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from edge_zo.adapter import absorb  # noqa: E402
from edge_zo_export.quantize import FORMS, Target, _quantized_nodes, dequantized, quantize_graph  # noqa: E402


def run_form(form: str, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    target = Target("w", w, "out_in")
    nodes, inits = _quantized_nodes(target, form, "x", "y")
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


@pytest.mark.parametrize("form", FORMS)
def test_each_form_computes_x_times_its_dequantized_w(form):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 70)).astype(np.float32)  # 70 inputs: a padded last 32-block
    x = rng.standard_normal((3, 5, 70)).astype(np.float32)
    got = run_form(form, w, x)
    want = x @ dequantized(Target("w", w, "out_in"), form).T
    exact = x @ w.T
    scale = np.abs(exact).max()
    assert np.abs(got - want).max() <= 0.03 * scale  # the kernel's activation rounding only
    weight_error = {"int8": 0.02, "int8-dq": 0.02, "int8-nbits": 0.02, "int4": 0.25}[form]
    assert 0 < np.abs(want - exact).max() <= weight_error * scale


def test_the_graph_rewrite_refuses_a_w_it_does_not_recognise():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 4])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x, w],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(ValueError, match="Transpose -> MatMul"):
        quantize_graph(helper.make_model(graph), [Target("w", np.eye(4, dtype=np.float32), "out_in")], "int8")


def test_absorb_is_exact_up_to_rank_r_then_the_best_cut():
    rng = np.random.default_rng(0)
    m, n, r, R = 30, 20, 2, 4
    U, V = np.zeros((m, R), np.float32), np.zeros((R, n), np.float32)
    total = np.zeros((m, n))
    errors = []
    for _ in range(3):
        A, C = rng.standard_normal((m, r)).astype(np.float32), rng.standard_normal((r, n)).astype(np.float32)
        total += A.astype(np.float64) @ C
        U, V, error = absorb(U, V, A, C)
        errors.append(error)
    assert errors[0] < 1e-6 and errors[1] < 1e-6  # rank 2, then 4 = R: exact
    assert errors[2] > 0.01  # rank 6 cut to 4
    # the cut is the best rank-R approximation of what was kept plus the new update
    assert U.shape == (m, R) and V.shape == (R, n)
    assert np.linalg.matrix_rank(U.astype(np.float64) @ V) == R
    zero = (np.zeros((m, R), np.float32), np.zeros((R, n), np.float32))
    once, twice = absorb(*zero, U, V), absorb(*zero, U, V)
    assert all(np.array_equal(a, b) for a, b in zip(once, twice))  # deterministic: resume replays it
    assert np.allclose(once[0] @ once[1], U @ V, atol=1e-5)
