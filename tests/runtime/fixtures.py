"""Tiny bundles that follow the graph contract of edge_zo/bundle.py exactly, built with `onnx`.

A fast, torch-free test model: embeddings (initializer) -> two trained linear layers
(the first stored out,in; the second in,out like GPT-2's Conv1D) -> a classification
head over label words, or a next-token causal-LM head with a loss mask. Low-rank graphs
take W, A, D[P, r, n] per matrix and compute x W^T + (x D^T) A^T per probe slot; full-rank
graphs take W only. W values are overridable initializers (an initializer of the same
name as the graph input), optionally in external data. `reference` recomputes loss and
scores in float64 numpy from effective weights, so tests check the runtime independently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_zo.bundle import Manifest, TrainedMatrix, tokenizer_sha256, write_manifest

WORDS = "the a movie film was is great terrible good bad fine awful plot actor it not very".split()
LABEL_WORDS = ["bad", "good"]


@dataclass
class Tiny:
    path: Path
    manifest: Manifest
    weights: dict  # matrix name -> W as stored (layout of the graph)
    embed: np.ndarray
    head: np.ndarray
    vocab: list = field(default_factory=list)

    def effective(self, name: str, stored: np.ndarray) -> np.ndarray:
        """m x n (out x in) view of a stored W."""
        mat = next(m for m in self.manifest.matrices if m.name == name)
        return stored if mat.layout == "out_in" else stored.T

    def reference(self, batch: dict, X: dict, bias: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """(loss, scores) in float64 for effective weights X (name -> m x n) and, for a
        bundle with a logit bias, `bias` [1, V] (None: zero)."""
        names = [m.name for m in self.manifest.matrices]
        ids, mask = batch["input_ids"], batch["attention_mask"].astype(np.float64)
        x = self.embed.astype(np.float64)[ids]
        if self.manifest.task == "classification":
            h = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        else:
            h = x[:, :-1]
        h = np.tanh(h @ X[names[0]].T.astype(np.float64))
        h = h @ X[names[1]].T.astype(np.float64)
        logits = h @ self.head.T.astype(np.float64) + (0.0 if bias is None else bias.astype(np.float64)[0])
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        if self.manifest.task == "classification":
            nll = -logp[np.arange(len(ids)), batch["labels"]]
            return float(nll.mean()), logits
        tok = -np.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0] * batch["loss_mask"][:, 1:]
        return float(tok.sum() / batch["loss_mask"][:, 1:].sum()), tok.sum(1)

    def batch(self, batch_size: int = 3, seq: int = 6, seed: int = 0) -> dict:
        rng = np.random.default_rng(seed)
        ids = rng.integers(2, len(self.vocab), size=(batch_size, seq)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[0, -2:] = 0
        ids[0, -2:] = 0
        out = {"input_ids": ids, "attention_mask": mask}
        if self.manifest.task == "classification":
            out["labels"] = rng.integers(0, len(LABEL_WORDS), size=batch_size).astype(np.int64)
        else:
            loss_mask = mask.astype(np.float32)
            loss_mask[:, :2] = 0
            out["loss_mask"] = loss_mask
        return out


def _const(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


class _Graph:
    """Collects nodes, inputs and initializers while the model is built."""

    def __init__(self):
        self.nodes, self.inputs, self.inits = [], [], []

    def op(self, op_type: str, inputs: list, out: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def input(self, name: str, elem, shape) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def linear(self, h: str, mat: TrainedMatrix, rank: int, token_dims: int) -> str:
        """h [1, B, (T,) n] -> [P, B, (T,) m]: h W^T (+ (h D^T) A^T for a low-rank graph)."""
        m, n = mat.shape
        w = self.input(mat.inputs["W"], TensorProto.FLOAT, list(mat.stored_shape))
        wt = self.op("Transpose", [w], f"{w}/T") if mat.layout == "out_in" else w
        base = self.op("MatMul", [h, wt], f"{w}/base")
        if "A" not in mat.inputs:
            return base
        a = self.input(mat.inputs["A"], TensorProto.FLOAT, [m, rank])
        d = self.input(mat.inputs["D"], TensorProto.FLOAT, ["P", rank, n])
        dt = self.op("Transpose", [d], f"{d}/T", perm=[0, 2, 1])
        if token_dims == 2:
            dt = self.op("Unsqueeze", [dt, "axis1"], f"{d}/T4")
        t = self.op("MatMul", [h, dt], f"{d}/hd")
        low = self.op("MatMul", [t, self.op("Transpose", [a], f"{a}/T")], f"{a}/low")
        return self.op("Add", [base, low], f"{w}/out")


def build(path: str | Path, task: str = "classification", graph: str = "lowrank", hidden: int = 12,
          ffn: int = 16, out_dim: int = 10, rank: int = 4, probe_slots: int = 4, max_seq_len: int = 16,
          seed: int = 0, external: bool = False, static_slots: bool = False, logit_bias: bool = False) -> Tiny:
    """Write a tiny bundle folder at `path`; return it with its weights and reference.
    `logit_bias` (causal-lm): a zero logit bias [1, V] and the token_probs output, as
    `export --logit-bias` writes them."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = ["[PAD]", "[UNK]", *WORDS]
    V = len(vocab)
    roles = ("W", "A", "D") if graph == "lowrank" else ("W",)
    mats = [TrainedMatrix("layers.0.fc1.weight", (ffn, hidden)),
            TrainedMatrix("layers.0.fc2.weight", (out_dim, ffn), layout="in_out")]
    for mat in mats:
        mat.inputs = {r: mat.name if r == "W" else f"{mat.name}::{r}" for r in roles}
    weights = {m.name: (rng.standard_normal(m.stored_shape) / np.sqrt(m.shape[1])).astype(np.float32)
               for m in mats}
    if logit_bias:
        mats.append(TrainedMatrix("logit_bias", (1, V), inputs={"W": "logit_bias"}, exact=True))
        weights["logit_bias"] = np.zeros((1, V), np.float32)
    embed = rng.standard_normal((V, hidden)).astype(np.float32)
    label_ids = [vocab.index(w) for w in LABEL_WORDS]
    head = (rng.standard_normal((len(LABEL_WORDS) if task == "classification" else V, out_dim))
            .astype(np.float32))
    g = _Graph()
    g.inits += [numpy_helper.from_array(embed, "embed"), numpy_helper.from_array(head, "head"),
                _const("axis0", [0]), _const("axis1", [1]), _const("axis2", [2]), _const("last", [-1]),
                _const("one", [1]), _const("big", [1 << 30])]
    g.inits += [numpy_helper.from_array(w, n) for n, w in weights.items()]
    ids = g.input("input_ids", TensorProto.INT64, ["B", "T"])
    mask = g.input("attention_mask", TensorProto.INT64, ["B", "T"])
    x = g.op("Gather", ["embed", ids], "x")
    token_dims = 1 if task == "classification" else 2
    if task == "classification":
        labels = g.input("labels", TensorProto.INT64, ["B"])
        maskf = g.op("Cast", [mask], "maskf", to=TensorProto.FLOAT)
        summed = g.op("ReduceSum", [g.op("Mul", [x, g.op("Unsqueeze", [maskf, "last"], "mask3")], "xm"), "axis1"],
                      "xs", keepdims=0)
        h = g.op("Div", [summed, g.op("ReduceSum", [maskf, "axis1"], "cnt", keepdims=1)], "pooled")
    else:
        loss_mask = g.input("loss_mask", TensorProto.FLOAT, ["B", "T"])
        h = g.op("Slice", [x, "axis0", "last", "axis1"], "xprev")
    h = g.op("Unsqueeze", [h, "axis0"], "h0")
    h = g.op("Tanh", [g.linear(h, mats[0], rank, token_dims)], "h1")
    h = g.linear(h, mats[1], rank, token_dims)
    logits = g.op("MatMul", [h, g.op("Transpose", ["head"], "headT")], "logits")
    if logit_bias:
        logits = g.op("Add", [logits, g.input("logit_bias", TensorProto.FLOAT, [1, V])], "biased")
    logp = g.op("LogSoftmax", [logits], "logp", axis=-1)
    if task == "classification":
        onehot = g.op("OneHot", [labels, _scalar_const(g, "depth", len(LABEL_WORDS)), _onoff(g)], "onehot")
        nll = g.op("Neg", [g.op("ReduceSum", [g.op("Mul", [logp, onehot], "lp"), "last"], "picked", keepdims=0)], "nll")
        g.op("ReduceMean", [nll, "axis1"], "loss", keepdims=0)
        g.op("Identity", [logits], "scores")
        score_shape = ["P", "B", len(LABEL_WORDS)]
    else:
        target = g.op("Slice", [ids, "one", "big", "axis1"], "target")
        scored = g.op("Slice", [loss_mask, "one", "big", "axis1"], "scored")
        onehot = g.op("OneHot", [target, _scalar_const(g, "depth", V), _onoff(g)], "onehot")
        tok = g.op("ReduceSum", [g.op("Mul", [logp, onehot], "lp"), "last"], "picked", keepdims=0)
        nll = g.op("Mul", [g.op("Neg", [tok], "negtok"), scored], "nll")
        g.op("ReduceSum", [nll, "axis2"], "scores", keepdims=0)
        total = g.op("ReduceSum", ["scores", "axis1"], "total", keepdims=0)
        g.op("Div", [total, g.op("ReduceSum", [scored], "count", keepdims=0)], "loss")
        score_shape = ["P", "B"]
        if logit_bias:  # sum over the scored tokens of softmax(logits + b): [P, V]
            weighted = g.op("Mul", [g.op("Exp", [logp], "probs"), g.op("Unsqueeze", [scored, "last"], "scored3")], "pw")
            g.op("ReduceSum", [weighted, _const_axes(g)], "token_probs", keepdims=0)
    P = probe_slots if static_slots else "P"
    for inp in g.inputs:
        dims = inp.type.tensor_type.shape.dim
        if static_slots and dims and dims[0].dim_param == "P":
            dims[0].dim_value = probe_slots
    outputs = [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [P]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [P] + score_shape[1:])]
    if logit_bias:
        outputs.append(helper.make_tensor_value_info("token_probs", TensorProto.FLOAT, [P, V]))
    model = helper.make_model(helper.make_graph(g.nodes, "tiny", g.inputs, outputs, g.inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    if external:
        onnx.save(model, path / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                  location="model.onnx.data", size_threshold=256)
    else:
        onnx.save(model, path / "model.onnx")
    write_tokenizer(path / "tokenizer.json", vocab)
    source = {"model": "tests/runtime/fixtures.py", "seed": seed, "vocab_size": V,  # as export records them
              "tokenizer_sha256": tokenizer_sha256((path / "tokenizer.json").read_bytes())}
    manifest = Manifest(task=task, graph=graph, rank=rank if graph == "lowrank" else 0,
                        probe_slots=probe_slots if graph == "lowrank" else 1, max_seq_len=max_seq_len,
                        matrices=mats, source=source,
                        exporter={"onnx": onnx.__version__}, opset=18,
                        label_words=LABEL_WORDS if task == "classification" else [],
                        label_token_ids=label_ids if task == "classification" else [])
    write_manifest(path, manifest)
    return Tiny(path, manifest, weights, embed, head, vocab)


def _const_axes(g: _Graph) -> str:
    g.inits.append(_const("axes12", [1, 2]))
    return "axes12"


def _scalar_const(g: _Graph, name: str, value: int) -> str:
    if name not in {i.name for i in g.inits}:
        g.inits.append(numpy_helper.from_array(np.array(value, np.int64), name))
    return name


def _onoff(g: _Graph) -> str:
    if "onoff" not in {i.name for i in g.inits}:
        g.inits.append(numpy_helper.from_array(np.array([0.0, 1.0], np.float32), "onoff"))
    return "onoff"


def write_tokenizer(path: Path, vocab: list[str]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    json.loads(path.read_text())  # it must be valid JSON for the runtime's tokenizer
