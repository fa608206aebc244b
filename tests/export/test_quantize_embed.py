"""edge_zo_export/quantize_embed.py on a hand-built graph of a language model's ends, run by onnxruntime.

The graph holds what an exported bundle holds around its token embedding E: the token Gather
(indices from input_ids through a Tile, as the probe axis tiles them), a tied LM head
(Transpose(E) -> MatMul, or MatMul with Eᵀ as its own initializer, as the exporter's constant
folding leaves a small one), a label-words Gather of constant rows, and a position table indexed
by a Shape-derived range. The rewrite must quantize the first two, keep the label rows exact,
leave the position table fp32, and compute what numpy computes from the dequantized E.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edge_zo_export.quantize import dequantize_blocks, dequantize_int8, quantize_blocks, quantize_int8  # noqa: E402
from edge_zo_export.quantize_embed import quantize_embeddings, token_tables  # noqa: E402

V, H, T = 300, 64, 6
LABEL_IDS = np.array([7, 42], np.int64)


def lm_ends(e: np.ndarray, pos: np.ndarray, folded: bool = False) -> onnx.ModelProto:
    """input_ids [1, T] -> (emb [2, T, H] tiled twice, logits [2, T, V], labels [2, H], positions [T, H])."""
    f = TensorProto.FLOAT
    nodes = [helper.make_node("Tile", ["input_ids", "reps"], ["ids2"]),
             helper.make_node("Gather", ["E", "ids2"], ["emb"]),
             *([] if folded else [helper.make_node("Transpose", ["E"], ["Et"], perm=[1, 0])]),
             helper.make_node("MatMul", ["emb", "Et"], ["logits"]),
             helper.make_node("Gather", ["E", "label_ids"], ["labels"]),
             helper.make_node("Shape", ["input_ids"], ["shape"], start=1, end=2),
             helper.make_node("Squeeze", ["shape"], ["length"]),
             helper.make_node("Range", ["zero", "length", "one"], ["positions_ids"]),
             helper.make_node("Gather", ["P", "positions_ids"], ["positions"])]
    inits = [numpy_helper.from_array(e, "E"), numpy_helper.from_array(pos, "P"),
             numpy_helper.from_array(np.array([2, 1], np.int64), "reps"),
             numpy_helper.from_array(LABEL_IDS, "label_ids"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(1, np.int64), "one"),
             *([numpy_helper.from_array(np.ascontiguousarray(e.T), "Et")] if folded else [])]
    outputs = [helper.make_tensor_value_info(n, f, None) for n in ("emb", "logits", "labels", "positions")]
    graph = helper.make_graph(nodes, "ends", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, T])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    return model


def run(model, ids):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": ids})


@pytest.mark.parametrize("folded", [False, True])
@pytest.mark.parametrize("form,bits", [("int4", 4), ("int8", 8)])
def test_the_token_table_and_the_tied_head_are_quantized_the_rest_kept(form, bits, folded):
    rng = np.random.default_rng(0)
    e = rng.standard_normal((V, H)).astype(np.float32)
    pos = rng.standard_normal((T, H)).astype(np.float32)
    ids = rng.integers(0, V, (1, T))
    model = lm_ends(e, pos, folded)
    assert token_tables(model.graph) == ["E"]  # not P: its indices come from a Shape
    exact = run(model, ids)
    assert quantize_embeddings(model, form) == (["E", "Et"] if folded else ["E"])
    emb, logits, labels, positions = run(model, ids)
    names = {t.name for t in model.graph.initializer}
    assert not {"E", "Et"} & names and {"E::gbq", "Et::head" if folded else "E::head", "P"} <= names
    ops = {n.op_type for n in model.graph.node}
    assert {"GatherBlockQuantized", "MatMulNBits" if bits == 4 else "DynamicQuantizeMatMul"} <= ops
    rows = dequantize_blocks(*quantize_blocks(e.T, bits), H, bits).T  # what GatherBlockQuantized returns
    np.testing.assert_array_equal(emb, np.tile(rows[ids], (2, 1, 1)))  # exact: no rounding in a gather
    head = dequantize_blocks(*quantize_blocks(e.T, bits), H, bits) if bits == 4 else dequantize_int8(*quantize_int8(e.T))
    want = emb @ head
    assert np.abs(logits - want).max() <= 0.03 * np.abs(want).max()  # the head kernel's activation rounding
    assert 0 < np.abs(emb - exact[0]).max() <= (0.2 if bits == 4 else 0.01) * np.abs(e).max()
    np.testing.assert_array_equal(labels, e[LABEL_IDS])  # label rows exact
    np.testing.assert_array_equal(positions, pos)


def test_benchmark_forms_and_other_uses_leave_the_table_fp32():
    e = np.ones((V, H), np.float32)
    model = lm_ends(e, np.ones((T, H), np.float32))
    assert quantize_embeddings(model, "int8-dq") == []
    model.graph.node.append(helper.make_node("ReduceSum", ["E"], ["total"]))  # a use it does not know
    assert quantize_embeddings(model, "int4") == []
    assert "E" in {t.name for t in model.graph.initializer}
