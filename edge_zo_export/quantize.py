"""Quantized base weights: rewrite a training graph so each trained W is a frozen int8 / 4-bit initializer.

Each low-rank trained matrix's base product x·Wᵀ (the exporter writes Transpose(W) -> MatMul,
or MatMul(x, W) for GPT-2's in x out Conv1D) is replaced by one node on quantized bytes; the
probe path (x·D[p]ᵀ)·Aᵀ is left fp32 and untouched. Forms (benchmarks/quantized.py measured
them side by side, docs/design.md "Quantized base weights"):

  int8      com.microsoft DynamicQuantizeMatMul: x quantized per call (uint8), W int8 per output
            channel, integer MatMul (VNNI on x86). The fastest int8 form measured.
  int8-dq   DequantizeLinear(W int8) -> MatMul: weight-only; onnxruntime dequantizes each run.
  int4      com.microsoft MatMulNBits bits=4, blocks of 32 along the input axis, symmetric
            (zero point 8), accuracy_level 1 (fp32 activations: ACCURACY_LEVEL says why).
  int8-nbits  the same kernel with bits=8 (zero point 128).

Dense matrices (the linear head), and matrices smaller than their adapter, keep their fp32
W input (quantize_bundle). The frozen token embedding and a tied LM head are quantized by
edge_zo_export/quantize_embed.py in the same rewrite. Quantization is symmetric, so
dequantize(quantize(W)) is W to within half a step: per output channel max|W_j| / 127 for
int8, per block max|w| / 7 for int4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

FORMS = ("int8", "int8-dq", "int4", "int8-nbits")
BLOCK = 32  # MatMulNBits block along K: onnxruntime's default, and what its own quantizer writes
MS_DOMAIN = "com.microsoft"
# MatMulNBits' accuracy_level by bits. 4 (int8 activations) repacks a 4-bit B into a buffer the
# size of int8 weights on this x86 host (SmolLM2-135M int4: +129 MiB at session load, as int8;
# level 1: +90 MiB) and ran slower: peak 0.50 -> 0.44 of fp32's, time 1.40 -> 1.12
# (benchmarks/results/quantized-int4-accuracy-level-smollm2-135m.json). int8-nbits keeps 4.
ACCURACY_LEVEL = {4: 1, 8: 4}
ADAPTER_FACTOR = 4  # default adapter rank R = 4 r: four folds before compression truncates
# Export check at zero update, against the fp32 graph on the traced batch (loss, scores):
# |Δloss| <= LOSS x max(|loss|, 1) and max |Δscore| <= SCORES x max |score|. A coarse guard
# (a near-chance classifier's loss barely moves whatever its weights); the kernels' forms
# are tested against numpy in tests/export/test_quantize.py. MiniLM on the traced batch:
# int8 Δloss 5%, Δscores 16%; int4 2%, 17%.
QUANT_TOLERANCE = {"loss": 0.25, "scores": 0.5}


@dataclass
class Target:
    """One trained matrix's base weight to quantize: graph input name, stored values, layout."""

    name: str
    weight: np.ndarray  # stored layout: [m, n] for "out_in", [n, m] for "in_out"
    layout: str

    @property
    def k_by_n(self) -> np.ndarray:
        """W as a MatMul's right operand: [in, out]."""
        w = np.asarray(self.weight, np.float32)
        return w.T if self.layout == "out_in" else w


def quantize_int8(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q int8 [K, N], scale float32 [N]): symmetric, one scale per output column."""
    amax = np.abs(b).max(axis=0)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(b / scale), -127, 127).astype(np.int8)
    return q, scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale


def quantize_blocks(b: np.ndarray, bits: int, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits operands of B [K, N]: (packed uint8 [N, blocks, block·bits/8], scales
    float32 [N, blocks]); symmetric, the default zero point 2^(bits-1); K padded with zeros."""
    k, n = b.shape
    blocks = -(-k // block)
    padded = np.zeros((blocks * block, n), np.float32)
    padded[:k] = b
    w = padded.T.reshape(n, blocks, block)
    top = 2 ** (bits - 1) - 1
    amax = np.abs(w).max(axis=2)
    scale = np.where(amax > 0, amax / top, 1.0).astype(np.float32)
    q = (np.clip(np.rint(w / scale[..., None]), -top, top) + top + 1).astype(np.uint8)
    if bits == 4:  # two per byte, the even element in the low nibble
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return q, scale


def dequantize_blocks(packed: np.ndarray, scale: np.ndarray, k: int, bits: int) -> np.ndarray:
    """B [K, N] from `quantize_blocks`' operands (what the kernel multiplies by)."""
    q = packed.astype(np.int16)
    if bits == 4:
        q = np.stack([q & 15, q >> 4], axis=-1).reshape(*q.shape[:2], -1)
    w = (q - 2 ** (bits - 1)) * scale[..., None]
    return w.reshape(w.shape[0], -1)[:, :k].T.astype(np.float32)


def dequantized(target: Target, form: str) -> np.ndarray:
    """What the quantized graph computes with instead of W, in W's stored layout."""
    b = target.k_by_n
    if form in ("int8", "int8-dq"):
        out = dequantize_int8(*quantize_int8(b))
    else:
        bits = 4 if form == "int4" else 8
        out = dequantize_blocks(*quantize_blocks(b, bits), b.shape[0], bits)
    return out.T if target.layout == "out_in" else out


def quantize_graph(model: onnx.ModelProto, targets: list[Target], form: str,
                   adapter_rank: int = 0, keep_notes: bool = False) -> onnx.ModelProto:
    """`model` with each target's W input replaced by quantized initializers (in place).

    adapter_rank R > 0 adds the trained update's place: inputs `NAME::U` float32 [m, R] and
    `NAME::V` float32 [R, n] (out x in, like A and C), y = x·deq(W)ᵀ + (x·Vᵀ)·Uᵀ. In a
    training graph they join its probe path, whose A and D become [A U] and [D[p]; V] (rank
    r + R): one skinny product pair and one Add per layer as before. Measured on MiniLM, a
    separate adapter path cost ~0.04 s CPU per forward and +17 MiB peak whatever R (8, 16 or
    32): the extra Add and its [rows, m] intermediate, not the flops.

    With an adapter the exporter's shape notes (value_info) of the probe path go stale (rank r
    where it is now r + R; onnxruntime warned at every load). keep_notes=False drops them all,
    True only the stale ones. Measured (benchmarks/quantized.py, 16 x 64), each wins on one
    task: classification with all dropped ran faster in less memory (SmolLM2 int8 0.36x fp32's
    time against 0.48x, int4 peak 0.44x against 0.52x; MiniLM alike: onnxruntime fuses and
    plans otherwise with full shapes), a causal-lm graph needs them for its vocabulary-wide
    logits (SmolLM2 int4 peak 0.55x fp32's with them, 1.19x without). quantize_bundle keeps
    them for causal-lm.
    """
    if form not in FORMS:
        raise ValueError(f"form {form!r} is not one of {FORMS}")
    graph = model.graph
    ranks = {int(i.type.tensor_type.shape.dim[1].dim_value) for i in graph.input if i.name.endswith("::A")}
    for target in targets:
        matmul, operand = _base_matmul(graph, target)
        x, y = matmul.input[0], matmul.output[0]
        probe = f"{target.name}::A" in {i.name for i in graph.input}
        base = f"{target.name}::q.y" if adapter_rank and not probe else y
        new_nodes, inits = _quantized_nodes(target, form, x, base)
        if adapter_rank and probe:
            front = _probe_adapter_nodes(graph, target, adapter_rank)
            for offset, node in enumerate(front):  # they read graph inputs only
                graph.node.insert(offset, node)
        elif adapter_rank:
            new_nodes += _adapter_nodes(graph, target, x, base, y, adapter_rank)
        position = list(graph.node).index(matmul)
        graph.node.remove(matmul)
        for offset, node in enumerate(new_nodes):
            graph.node.insert(position + offset, node)
        graph.initializer.extend(inits)
        if operand is not None:  # the Transpose(W) feeding it
            graph.node.remove(operand)
        _drop_input(graph, target.name)
    if adapter_rank and keep_notes:  # the probe path's notes say rank r where it now has r + R
        _drop_rank_notes(graph, ranks)
    elif adapter_rank:
        del graph.value_info[:]  # onnxruntime infers them again
    if not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model


def _drop_rank_notes(graph, ranks: set[int]) -> None:
    """Drop the shape notes (value_info) of the probe path's rank-r tensors, now rank r + R,
    and keep every other (SmolLM2 causal-lm, 16 x 64, all dropped: peak 883 -> 1451 MiB in fp32)."""
    probed = {i.name for i in graph.input if i.name.endswith(("::A", "::D"))}
    for node in graph.node:  # topological: everything computed from an A or a D
        if any(name in probed for name in node.input):
            probed.update(node.output)
    stale = [v for v in graph.value_info if v.name in probed
             and any(d.dim_value in ranks for d in v.type.tensor_type.shape.dim)]
    for value in stale:
        graph.value_info.remove(value)


def _base_matmul(graph, target: Target):
    """(the MatMul computing x·Wᵀ, the Transpose node between W and it or None)."""
    users = [node for node in graph.node if target.name in node.input]
    if len(users) == 1 and users[0].op_type == "MatMul" and target.layout == "in_out":
        return users[0], None
    if len(users) == 1 and users[0].op_type == "Transpose" and target.layout == "out_in":
        transposed = users[0].output[0]
        matmuls = [node for node in graph.node if transposed in node.input]
        if len(matmuls) == 1 and matmuls[0].op_type == "MatMul" and matmuls[0].input[1] == transposed:
            return matmuls[0], users[0]
    raise ValueError(f"{target.name}: the graph does not use it as Transpose -> MatMul "
                     f"({[n.op_type for n in users]}); re-export with this edge-zo")


def _quantized_nodes(target: Target, form: str, x: str, y: str):
    """(nodes computing y = x·Wᵀ from quantized W, their initializers)."""
    b = target.k_by_n
    k, n = b.shape
    prefix = f"{target.name}::q"
    if form in ("int8", "int8-dq"):
        q, scale = quantize_int8(b)
        inits = [numpy_helper.from_array(q, f"{prefix}"), numpy_helper.from_array(scale, f"{prefix}.scale"),
                 numpy_helper.from_array(np.zeros(n, np.int8), f"{prefix}.zero")]
        if form == "int8":
            return [helper.make_node("DynamicQuantizeMatMul", [x, prefix, f"{prefix}.scale", f"{prefix}.zero"],
                                     [y], domain=MS_DOMAIN, name=f"{prefix}.matmul")], inits
        return [helper.make_node("DequantizeLinear", [prefix, f"{prefix}.scale", f"{prefix}.zero"],
                                 [f"{prefix}.w"], axis=1, name=f"{prefix}.dq"),
                helper.make_node("MatMul", [x, f"{prefix}.w"], [y], name=f"{prefix}.matmul")], inits
    bits = 4 if form == "int4" else 8
    packed, scale = quantize_blocks(b, bits)
    inits = [numpy_helper.from_array(packed, prefix), numpy_helper.from_array(scale.reshape(-1), f"{prefix}.scale")]
    node = helper.make_node("MatMulNBits", [x, prefix, f"{prefix}.scale"], [y], domain=MS_DOMAIN,
                            name=f"{prefix}.matmul", K=k, N=n, bits=bits, block_size=BLOCK,
                            accuracy_level=ACCURACY_LEVEL[bits])
    return [node], inits


def adapter_inputs(name: str) -> dict[str, str]:
    """Graph input names of one matrix's adapter factors."""
    return {"U": f"{name}::U", "V": f"{name}::V"}


def _add_adapter_inputs(graph, target: Target, rank: int) -> dict[str, str]:
    m, n = target.k_by_n.shape[::-1]
    names = adapter_inputs(target.name)
    graph.input.extend([helper.make_tensor_value_info(names["U"], onnx.TensorProto.FLOAT, [m, rank]),
                        helper.make_tensor_value_info(names["V"], onnx.TensorProto.FLOAT, [rank, n])])
    return names


def _probe_adapter_nodes(graph, target: Target, rank: int) -> list:
    """[A U] and [D[p]; V] (V repeated over the P slots) in place of A and D for their users."""
    names = _add_adapter_inputs(graph, target, rank)
    a, d, p = f"{target.name}::A", f"{target.name}::D", f"{target.name}::adapter"
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in (a, d):
                node.input[i] = f"{p}.{'A' if name == a else 'D'}"
    graph.initializer.append(numpy_helper.from_array(np.array([rank, target.k_by_n.shape[0]], np.int64), f"{p}.rn"))
    graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), f"{p}.axis0"))
    return [helper.make_node("Concat", [a, names["U"]], [f"{p}.A"], axis=1, name=f"{p}.A"),
            helper.make_node("Shape", [d], [f"{p}.P"], start=0, end=1, name=f"{p}.P"),
            helper.make_node("Concat", [f"{p}.P", f"{p}.rn"], [f"{p}.shape"], axis=0, name=f"{p}.shape"),
            helper.make_node("Unsqueeze", [names["V"], f"{p}.axis0"], [f"{p}.V1"], name=f"{p}.V1"),
            helper.make_node("Expand", [f"{p}.V1", f"{p}.shape"], [f"{p}.Vp"], name=f"{p}.Vp"),
            helper.make_node("Concat", [d, f"{p}.Vp"], [f"{p}.D"], axis=1, name=f"{p}.D")]


def _adapter_nodes(graph, target: Target, x: str, base: str, y: str, rank: int) -> list:
    """y = base + (x·Vᵀ)·Uᵀ, with U [m, R] and V [R, n] new graph inputs (a graph without A, D)."""
    names = _add_adapter_inputs(graph, target, rank)
    p = f"{target.name}::adapter"
    return [helper.make_node("Transpose", [names["V"]], [f"{p}.vt"], perm=[1, 0], name=f"{p}.vt"),
            helper.make_node("MatMul", [x, f"{p}.vt"], [f"{p}.low"], name=f"{p}.low"),
            helper.make_node("Transpose", [names["U"]], [f"{p}.ut"], perm=[1, 0], name=f"{p}.ut"),
            helper.make_node("MatMul", [f"{p}.low", f"{p}.ut"], [f"{p}.delta"], name=f"{p}.delta"),
            helper.make_node("Add", [base, f"{p}.delta"], [y], name=f"{p}.add")]


def _drop_input(graph, name: str) -> None:
    for value in list(graph.input):
        if value.name == name:
            graph.input.remove(value)


# ---- the bundle step of `edge-zo export --weights int8|int4` ----------------------------

def validate(opts) -> None:
    """Refuse option combinations a quantized base does not support; fill the default R."""
    from edge_zo.errors import UserError
    if opts.graph != "lowrank":
        raise UserError(f"--weights {opts.weights} needs --graph lowrank: a quantized base is frozen, "
                        "so only the low-rank methods' adapter can hold the update; drop --graph fullrank")
    if opts.dtype != "fp32":
        raise UserError(f"--weights {opts.weights} quantizes fp32 weights; drop --dtype {opts.dtype}")
    if opts.adapter_rank is None:
        opts.adapter_rank = ADAPTER_FACTOR * opts.rank
    if opts.adapter_rank < opts.rank:
        raise UserError(f"--adapter-rank {opts.adapter_rank} must be at least --rank {opts.rank}: "
                        "one fold adds a rank-r update")


def quantize_bundle(folder, manifest, form: str, adapter_rank: int, batch: dict | None):
    """Rewrite a finished fp32 low-rank bundle in `folder` to a quantized base; return its manifest.

    The graph is re-saved with fresh external data (the appended fp32 W go), the dense
    matrices' W are appended again, and with `batch` the new graph's loss at U = V = A = D = 0
    must agree with the fp32 graph's within QUANT_TOLERANCE.
    """
    import dataclasses

    import torch

    from edge_zo.bundle import write_manifest
    from edge_zo.loading import read_weights
    from edge_zo_export.checks import run_bundle
    from edge_zo_export.graph import append_weights
    model_path = folder / manifest.model_file
    weights = read_weights(folder, manifest)[0]
    want = run_bundle(folder, manifest, batch) if batch is not None else None
    # a matrix smaller than its adapter stays fp32 (W, A, D): quantizing it would save nothing
    low = [m for m in manifest.matrices if not m.dense and (m.shape[0] + m.shape[1]) * adapter_rank < m.shape[0] * m.shape[1]]
    if not low:
        from edge_zo.errors import UserError
        raise UserError(f"--weights {form}: every trained matrix is smaller than its rank-{adapter_rank} adapter, "
                        "so nothing would be quantized; give a smaller --adapter-rank or keep fp32 weights")
    targets = [Target(m.inputs["W"], weights[m.name], m.layout) for m in low]
    for name in filter(None, (manifest.model_file, manifest.inference_file)):  # deploy bakes the second
        rewrite(folder / name, targets, form, adapter_rank, keep_notes=manifest.task == "causal-lm")
    kept = [m for m in manifest.matrices if m not in low]  # fp32 W inputs, appended again
    records = dict(zip([m.name for m in kept],
                       append_weights(model_path, [torch.from_numpy(weights[m.name]) for m in kept])))
    matrices = [dataclasses.replace(m, weight_data=records[m.name]) if m in kept else dataclasses.replace(
        m, weight_data={}, inputs={"A": m.inputs["A"], "D": m.inputs["D"], **adapter_inputs(m.name)})
        for m in manifest.matrices]
    manifest = dataclasses.replace(manifest, matrices=matrices, weights=form, adapter_rank=adapter_rank)
    write_manifest(folder, manifest)
    if want is not None:
        check_quantized(folder, manifest, batch, want)
    return manifest


def rewrite(path, targets: list[Target], form: str, adapter_rank: int, keep_notes: bool = False) -> None:
    """quantize_graph and quantize_embeddings on the ONNX file at `path`, saved over it with
    fresh external data."""
    from edge_zo_export.graph import data_path
    from edge_zo_export.quantize_embed import quantize_embeddings
    model = onnx.load(str(path))
    quantize_graph(model, targets, form, adapter_rank, keep_notes)
    quantize_embeddings(model, form)  # the frozen token embedding and a tied LM head
    data_path(path).unlink(missing_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, location=data_path(path).name)
    data_path(path).chmod(path.stat().st_mode & 0o777)  # onnx writes it 0600; the rest of a bundle is not


def check_quantized(folder, manifest, batch: dict, want: tuple) -> None:
    """The quantized graph's loss and scores (A = D = U = V = 0) against the fp32 graph's `want`."""
    import onnxruntime as ort

    from edge_zo.errors import UserError
    from edge_zo.loading import read_weights
    session = ort.InferenceSession(str(folder / manifest.model_file), providers=["CPUExecutionProvider"])
    feed = {k: v.numpy() for k, v in batch.items()}
    weights = read_weights(folder, manifest)[0]
    for mat in manifest.matrices:
        m, n = mat.shape
        shapes = {"W": mat.stored_shape, "A": (m, manifest.rank), "D": (1, manifest.rank, n),
                  "U": (m, manifest.adapter_rank), "V": (manifest.adapter_rank, n)}
        for role, name in mat.inputs.items():
            feed[name] = weights[mat.name] if role == "W" else np.zeros(shapes[role], np.float32)
    loss, scores = session.run(["loss", "scores"], feed)
    (want_loss, *_), want_scores = want
    score_gap = float(np.abs(scores - want_scores).max() / max(np.abs(want_scores).max(), 1e-30))
    loss_gap = abs(float(loss[0]) - float(want_loss)) / max(abs(float(want_loss)), 1.0)
    if not np.isfinite(loss_gap) or loss_gap > QUANT_TOLERANCE["loss"] or score_gap > QUANT_TOLERANCE["scores"]:
        raise UserError(f"quantized parity check failed: the {manifest.weights} graph's loss is {loss_gap:.0%} and its "
                        f"scores {score_gap:.0%} off the fp32 graph's (allowed {QUANT_TOLERANCE['loss']:.0%}, "
                        f"{QUANT_TOLERANCE['scores']:.0%}); the bundle was not written "
                        "(rerun with --no-check to inspect it anyway)")
