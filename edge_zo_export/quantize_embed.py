"""The frozen token embedding (and the LM head tied to it) of a quantized bundle, quantized too.

`edge-zo export --weights int8|int4` quantizes the trained matrices' base (edge_zo_export/quantize.py);
the token embedding is frozen as well and, on a small language model, the largest single
tensor (SmolLM2-135M: 49152 x 576, 108 MiB fp32, tied to the LM head). This rewrites each
use of it, in place:

  Gather(E, ids)                 -> com.microsoft GatherBlockQuantized (onnxruntime >= 1.20):
                                    E's rows in blocks of 32 along the hidden axis, symmetric,
                                    bits 4 or 8, dequantized per gathered row only
  Transpose(E) -> MatMul(x, ·)   -> the tied LM head (a causal-lm bundle's logits; or MatMul(x, Eᵀ)
                                    with Eᵀ an initializer the exporter folded): MatMulNBits
                                    bits 4 (int4) or DynamicQuantizeMatMul int8 per vocabulary
                                    row (int8), the trained matrices' own kernels

The token embedding is the Gather whose indices depend on `input_ids` by value (position
and token-type tables are indexed by shapes or constants and stay fp32: they are small); a
label-words head's Gather of the same table (constant ids) becomes those few rows, kept fp32
and exact. A table with any other use stays fp32. An untied LM head (a float initializer of
the token table's shape, or its transpose, used only as a head) is quantized like a tied
one. The Gather and the LM head keep separate initializers: the head's kernel repacks its
weight at load anyway, so sharing one would not save memory. Rounding is the trained
matrices' (quantize_blocks, quantize_int8): half a step at most. Measured effect:
docs/design.md "Quantized base weights" (a classification job holds only the rows it
gathers, since onnxruntime memory-maps the table; a causal-lm head reads all of it).
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from edge_zo_export.quantize import ACCURACY_LEVEL, BLOCK, MS_DOMAIN, quantize_blocks, quantize_int8

BITS = {"int8": 8, "int4": 4}  # the forms of --weights; the benchmark-only forms leave E fp32
BLOCKS = (32, 16)  # GatherBlockQuantized's block along the hidden axis: the first dividing it
VALUE_FREE = ("Shape", "Size")  # ops whose output does not depend on their input's values


def quantize_embeddings(model, form: str) -> list[str]:
    """Quantize `model`'s token embedding tables in place (their data must be loaded);
    returns the names of the tables replaced (none for a form not in BITS)."""
    if form not in BITS:
        return []
    graph = model.graph
    done = []
    tables = token_tables(graph)
    shapes = {tuple(t.dims) for t in graph.initializer if t.name in tables}
    # an untied LM head has the table's shape; the exporter's constant folding may also leave
    # a head as a pre-transposed [H, V] copy, MatMul's right operand
    heads = [t.name for t in graph.initializer if t.data_type == 1 and t.name not in tables
             and (tuple(t.dims) in shapes or tuple(t.dims)[::-1] in shapes)]
    for name in tables + heads:
        flipped = tuple(_initializer(graph, name).dims) not in shapes  # stored [H, V]
        users = _users(graph, name)
        if not users or not all(_rewritable(graph, node, name, flipped) for node in users):
            continue
        table = numpy_helper.to_array(_initializer(graph, name)).astype(np.float32)
        table = table.T if flipped else table  # [V, H]
        block = next((b for b in BLOCKS if table.shape[1] % b == 0), None)
        if block is None:
            continue
        _rewrite_table(graph, name, table, users, BITS[form], block)
        done.append(name)
    if done and not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return done


def token_tables(graph) -> list[str]:
    """Float 2-D initializers gathered with indices that depend on input_ids' values."""
    floats = {t.name for t in graph.initializer if t.data_type == 1 and len(t.dims) == 2}
    fed = {"input_ids"}
    tables = []
    for node in graph.node:  # topological order: one pass finds every dependent tensor
        if node.op_type == "Gather" and node.input[0] in floats and node.input[1] in fed \
                and node.input[0] not in tables:
            tables.append(node.input[0])
        if node.op_type not in VALUE_FREE and any(i in fed for i in node.input):
            fed.update(node.output)
    return tables


def _constant(graph, name: str):
    """The value of `name` if an initializer or a Constant node holds it, else None."""
    found = [t for t in graph.initializer if t.name == name]
    found += [a.t for n in graph.node if n.op_type == "Constant" and n.output[0] == name
              for a in n.attribute if a.name == "value"]
    return numpy_helper.to_array(found[0]) if found else None


def _users(graph, name: str) -> list:
    return [node for node in graph.node if name in node.input]


def _initializer(graph, name: str):
    return next(t for t in graph.initializer if t.name == name)


def _rewritable(graph, node, name: str, flipped: bool) -> bool:
    """A Gather of rows, a Transpose feeding only MatMuls as their right operand (a head), or
    for a table stored [H, V] (`flipped`) a MatMul taking it as its right operand."""
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    if flipped:
        return node.op_type == "MatMul" and node.input[1] == name and node.input[0] != name
    if node.op_type == "Gather":
        return node.input[0] == name and axis == 0
    if node.op_type == "Transpose" and [list(a.ints) for a in node.attribute if a.name == "perm"] in ([], [[1, 0]]):
        heads = _users(graph, node.output[0])
        return bool(heads) and all(h.op_type == "MatMul" and h.input[1] == node.output[0]
                                   and h.input[0] != node.output[0] for h in heads)
    return False


def _rewrite_table(graph, name: str, table: np.ndarray, users: list, bits: int, block: int) -> None:
    """Replace every use of `table` [V, H]; drop its fp32 initializer."""
    gather_inits = gather_operands(table, bits, block, name)
    need_gather, head_inits, head = False, [], None
    for node in users:
        rows = _constant(graph, node.input[1]) if node.op_type == "Gather" else None
        if rows is not None:  # a label-words head's rows (constant ids): kept exact, a few fp32 rows
            kept = numpy_helper.from_array(table[rows], f"{node.output[0]}::rows")
            head_inits.append(kept)
            _replace(graph, node, helper.make_node("Identity", [kept.name], list(node.output), name=kept.name))
        elif node.op_type == "Gather":
            need_gather = True
            _replace(graph, node, helper.make_node(
                "GatherBlockQuantized", [gather_inits[0].name, node.input[1], gather_inits[1].name],
                list(node.output), domain=MS_DOMAIN, name=f"{node.output[0]}::gbq",
                gather_axis=0, quantize_axis=1, block_size=block, bits=bits))
        else:  # the LM head: each MatMul replaced where it stands (and a Transpose before it dropped)
            if head is None:
                head = head_operands(table, bits, name)
                head_inits += head
            for matmul in [node] if node.op_type == "MatMul" else _users(graph, node.output[0]):
                _replace(graph, matmul, _head_node(matmul, head, table.shape, bits))
            if node.op_type == "Transpose":
                graph.node.remove(node)
    graph.initializer.remove(_initializer(graph, name))
    graph.initializer.extend((gather_inits if need_gather else []) + head_inits)


def _replace(graph, node, new) -> None:
    position = list(graph.node).index(node)
    graph.node.remove(node)
    graph.node.insert(position, new)


def gather_operands(table: np.ndarray, bits: int, block: int, name: str) -> list:
    """GatherBlockQuantized's (data uint8 [V, H·bits/8], scales float32 [V, H / block]):
    quantize_blocks of Eᵀ is E's rows in blocks, low nibble first, zero point 2^(bits-1),
    the op's default for uint8 data."""
    packed, scale = quantize_blocks(table.T, bits, block)
    return [numpy_helper.from_array(packed.reshape(table.shape[0], -1), f"{name}::gbq"),
            numpy_helper.from_array(scale, f"{name}::gbq.scale")]


def head_operands(table: np.ndarray, bits: int, name: str) -> list:
    """The LM head x·Eᵀ's weight: B = Eᵀ [H, V], one column per vocabulary row."""
    if bits == 8:  # DynamicQuantizeMatMul: int8 [H, V], a scale per vocabulary row
        q, scale = quantize_int8(table.T)
        return [numpy_helper.from_array(q, f"{name}::head"), numpy_helper.from_array(scale, f"{name}::head.scale"),
                numpy_helper.from_array(np.zeros(table.shape[0], np.int8), f"{name}::head.zero")]
    packed, scale = quantize_blocks(table.T, bits)
    return [numpy_helper.from_array(packed, f"{name}::head"),
            numpy_helper.from_array(scale.reshape(-1), f"{name}::head.scale")]


def _head_node(matmul, inits: list, shape: tuple, bits: int):
    vocab, hidden = shape
    names = [t.name for t in inits]
    if bits == 8:
        return helper.make_node("DynamicQuantizeMatMul", [matmul.input[0], *names], list(matmul.output),
                                domain=MS_DOMAIN, name=f"{matmul.output[0]}::head")
    return helper.make_node("MatMulNBits", [matmul.input[0], *names], list(matmul.output), domain=MS_DOMAIN,
                            name=f"{matmul.output[0]}::head", K=hidden, N=vocab, bits=bits, block_size=BLOCK,
                            accuracy_level=ACCURACY_LEVEL[bits])
