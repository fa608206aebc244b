"""The bundle format: the manifest schema that `edge_zo_export/` writes and the runtime reads.

A bundle is a folder (DESIGN.md section 4):

    model.onnx (+ model.onnx.data)   the training graph
    manifest.json                    this schema
    tokenizer.json                   Hugging Face tokenizers format

This module is the single source of truth for what a manifest holds and how it is
checked. It imports nothing heavier than the standard library so that both the host
exporter and the device runtime can depend on it.

Graph contract (format version 1), low-rank graph (`graph == "lowrank"`):
  inputs   input_ids       int64   [B, T]
           attention_mask  int64   [B, T]
           labels          int64   [B]          (classification: index into label_words)
           loss_mask       float32 [B, T]       (causal-lm: 1 where the token at t is scored)
           per trained matrix X (m x n, out x in):
             W  base weight, stored layout (m x n for "out_in", n x m for "in_out")
             A  float32 [m, r]
             D  float32 [P, r, n]   one slice per probe slot; effective weight W + A D[p]
  outputs  loss    float32 [P]           mean loss of each probe slot
           scores  float32 [P, B, C]     classification: label scores (log-likelihood
                                         up to a per-row constant)
                   float32 [P, B]        causal-lm: per-row sum of scored-token NLL
           features float32 [P, B, F]    linear head only: the features the head scores
                                         (what `finetune`'s linear probe is fitted on)
A `dense` matrix (the linear head) has only its W input, also in a low-rank graph: it is
perturbed and updated in full (optimizers see it as one flat vector of m·n entries).
An `exact` matrix (causal-lm, `export --logit-bias`: `logit_bias` float32 [1, V], added to
every scored position's logits) has only its W input and is not the optimizers' at all:
the loop trains it by its exact gradient (edge_zo/logit_bias.py), read from the output
           token_probs float32 [P, V]   per probe slot, the sum over the scored tokens of
                                        the predicted distribution softmax(logits + bias)
The full-rank graph (`graph == "fullrank"`, MeZO/LOREN) has the same inputs without A
and D, and P = 1.
Base weight values: `TrainedMatrix.weight_data` = {location, offset, length} locates W's
bytes (stored layout, its dtype) inside the bundle (edge_zo_export/ appends them to
model.onnx.data, where no initializer references them, so onnxruntime never loads a copy).
`inference_file` (optional, "" in bundles written before it existed) names the plain
inference graph `edge-zo deploy` merges trained weights into (docs/export.md).
Quantized base (`weights` "int8" or "int4", docs/design.md "Quantized base weights"): each
low-rank matrix's W is a frozen quantized initializer of the graph (no W input, no
weight_data) and the trained update lives beside it as a rank-`adapter_rank` adapter:
inputs U float32 [m, R] and V float32 [R, n], effective weight deq(W) + U V + A D[p].
Dense matrices, and those smaller than their adapter ((m + n) R >= m n), keep their fp32
W input (and A, D) and fold into it as in an fp32 bundle.
`padding_side` says how the exporter expects batches padded (scores are read at the last
position whose attention_mask is 1).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path

from edge_zo.errors import BundleError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
TASKS = ("classification", "causal-lm")
GRAPHS = ("lowrank", "fullrank")
LAYOUTS = ("out_in", "in_out")
DTYPES = ("float32", "float16")
WEIGHT_FORMATS = ("fp32", "int8", "int4")  # export --weights: the base W of low-rank matrices
PADDING_SIDES = ("right", "left")
WEIGHT_DATA_KEYS = {"location", "offset", "length"}




@dataclass
class TrainedMatrix:
    """One trained weight X (m x n in the nn.Linear out x in convention)."""

    name: str  # the source model's parameter name
    shape: tuple[int, int]  # (m, n): out features, in features
    layout: str = "out_in"  # how W is stored: "in_out" for GPT-2's Conv1D
    dtype: str = "float32"  # dtype of W in the graph; A and D are always float32
    inputs: dict[str, str] = field(default_factory=dict)  # role ("W", "A", "D") -> graph input
    weight_data: dict = field(default_factory=dict)  # {location, offset, length} of W's bytes
    dense: bool = False  # W input only, even in a low-rank graph (the linear head)
    exact: bool = False  # W input only, trained by its exact gradient, not by ZO (the logit bias)

    def roles(self, graph: str, weights: str = "fp32") -> list[set[str]]:
        """The sets of graph inputs this matrix may have (bundle docstring)."""
        if graph != "lowrank" or self.dense or self.exact:
            return [{"W"}]
        return [{"W", "A", "D"}] + ([{"U", "A", "D", "V"}] if weights != "fp32" else [])

    @property
    def stored_shape(self) -> tuple[int, int]:
        m, n = self.shape
        return (m, n) if self.layout == "out_in" else (n, m)


@dataclass
class Manifest:
    task: str
    graph: str
    rank: int  # r; 0 for a full-rank graph
    probe_slots: int  # the P the planner may use at most (P = 1 is always valid)
    max_seq_len: int
    matrices: list[TrainedMatrix]
    # {"model": name or path, "architecture": ..., "sha256": ..., and since issue 15
    # "tokenizer_sha256" (of tokenizer.json) and "vocab_size" (embedding rows)}
    source: dict
    exporter: dict  # versions of torch, transformers, onnx, onnxscript, edge_zo
    opset: int = 20
    model_file: str = "model.onnx"
    label_words: list[str] = field(default_factory=list)
    label_token_ids: list[int] = field(default_factory=list)
    pad_token_id: int = 0
    padding_side: str = "right"
    # The plain inference graph `edge-zo deploy` bakes weights into; "" in older bundles.
    inference_file: str = ""
    weights: str = "fp32"  # WEIGHT_FORMATS; int8/int4: frozen quantized W, update in U V
    adapter_rank: int = 0  # R of U [m, R], V [R, n]; > 0 exactly when weights is quantized
    format_version: int = FORMAT_VERSION

    def trained_shapes(self) -> dict[str, tuple[int, ...]]:
        """What the optimizers see: (m, n) per matrix, (m·n,) for a dense one (their 1-D path);
        never an exact one (the loop trains it)."""
        return {m.name: (m.shape[0] * m.shape[1],) if m.dense else tuple(m.shape)
                for m in self.matrices if not m.exact}

    @property
    def logit_bias(self) -> TrainedMatrix | None:
        """The exact matrix (`export --logit-bias`), or None."""
        return next((m for m in self.matrices if m.exact), None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict, where: str = MANIFEST_NAME) -> "Manifest":
        if not isinstance(raw, dict):
            raise BundleError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"{where}: format_version {version!r} is not supported by this edge-zo "
                f"(it reads version {FORMAT_VERSION}); re-export the bundle with this version"
            )
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise BundleError(f"{where}: unknown keys {unknown}; known keys are {sorted(known)}")
        missing = sorted(k for k, f in cls.__dataclass_fields__.items()
                         if k not in raw and f.default is MISSING and f.default_factory is MISSING)
        if missing:
            raise BundleError(f"{where}: missing keys {missing}")
        body = dict(raw)
        try:
            body["matrices"] = [_matrix_from_dict(m) for m in raw["matrices"]]
        except (TypeError, KeyError, ValueError) as err:
            raise BundleError(f"{where}: bad entry in 'matrices': {err}") from None
        manifest = cls(**body)
        manifest.validate(where)
        return manifest

    def validate(self, where: str = MANIFEST_NAME) -> None:
        """Check every field's value; raise BundleError naming the first bad one."""
        def bad(msg: str) -> BundleError:
            return BundleError(f"{where}: {msg}")

        if self.task not in TASKS:
            raise bad(f"task {self.task!r} is not one of {TASKS}")
        if self.graph not in GRAPHS:
            raise bad(f"graph {self.graph!r} is not one of {GRAPHS}")
        if self.graph == "lowrank" and self.rank < 1:
            raise bad(f"a low-rank graph needs rank >= 1, got {self.rank}")
        if self.probe_slots < 1 or (self.graph == "fullrank" and self.probe_slots != 1):
            raise bad(f"probe_slots {self.probe_slots} is invalid for a {self.graph} graph")
        if self.max_seq_len < 1:
            raise bad(f"max_seq_len must be >= 1, got {self.max_seq_len}")
        if not self.matrices:
            raise bad("no trained matrices")
        if all(mat.dense or mat.exact for mat in self.matrices) and self.graph == "lowrank":
            raise bad("a low-rank graph needs at least one matrix that is not dense")
        if self.weights not in WEIGHT_FORMATS:
            raise bad(f"weights {self.weights!r} is not one of {WEIGHT_FORMATS}")
        if (self.weights != "fp32") != (self.adapter_rank > 0) or (self.adapter_rank and self.graph != "lowrank"):
            raise bad(f"adapter_rank {self.adapter_rank} does not fit weights {self.weights!r} "
                      f"on a {self.graph} graph (a quantized low-rank bundle has R > 0, others 0)")
        for mat in self.matrices:
            m, n = mat.shape
            lowrank = self.graph == "lowrank" and not (mat.dense or mat.exact)
            roles = mat.roles(self.graph, self.weights)
            if m < 1 or n < 1:
                raise bad(f"matrix {mat.name}: shape {mat.shape} must be positive")
            if lowrank and self.rank > min(m, n):
                raise bad(f"matrix {mat.name}: rank {self.rank} exceeds min(m, n) = {min(m, n)}")
            if mat.layout not in LAYOUTS:
                raise bad(f"matrix {mat.name}: layout {mat.layout!r} is not one of {LAYOUTS}")
            if mat.dtype not in DTYPES:
                raise bad(f"matrix {mat.name}: dtype {mat.dtype!r} is not one of {DTYPES}")
            if set(mat.inputs) not in roles:
                raise bad(f"matrix {mat.name}: inputs {sorted(mat.inputs)} must be "
                          f"{' or '.join(str(sorted(r)) for r in roles)}")
            if mat.exact and (self.task != "causal-lm" or m != 1 or mat.dense):
                raise bad(f"matrix {mat.name}: an exact matrix is a causal-lm logit bias of shape (1, V), "
                          f"not {mat.shape} in a {self.task} bundle")
            if mat.weight_data and set(mat.weight_data) != WEIGHT_DATA_KEYS:
                raise bad(f"matrix {mat.name}: weight_data keys {sorted(mat.weight_data)} "
                          f"must be {sorted(WEIGHT_DATA_KEYS)}")
        if self.padding_side not in PADDING_SIDES:
            raise bad(f"padding_side {self.padding_side!r} is not one of {PADDING_SIDES}")
        if self.task == "classification":
            if len(self.label_words) < 2:
                raise bad("a classification bundle needs at least two label_words")
            if self.label_token_ids and len(self.label_token_ids) != len(self.label_words):
                raise bad("label_token_ids and label_words differ in length")


def _matrix_from_dict(raw: dict) -> TrainedMatrix:
    unknown = set(raw) - set(TrainedMatrix.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    body = dict(raw)
    body["shape"] = tuple(int(v) for v in raw["shape"])
    if len(body["shape"]) != 2:
        raise ValueError(f"{raw['name']}: shape must have two dimensions")
    return TrainedMatrix(**body)


def tokenizer_sha256(data: bytes) -> str:
    """What export records as source["tokenizer_sha256"]: the bundle's tokenizer.json bytes."""
    return hashlib.sha256(data).hexdigest()


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """Load and validate `bundle_dir/manifest.json`; check the files it names exist."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: not a folder; a bundle is a folder made by `edge-zo export`")
    if not path.is_file():
        raise BundleError(f"{path}: missing; is {bundle_dir} a bundle made by `edge-zo export`?")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{path}: not valid JSON ({err})") from None
    manifest = Manifest.from_dict(raw, where=str(path))
    for name in filter(None, (manifest.model_file, TOKENIZER_NAME, manifest.inference_file)):
        if not (bundle_dir / name).is_file():
            raise BundleError(f"{bundle_dir / name}: missing from the bundle")
    return manifest


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    manifest.validate()
    path = Path(bundle_dir) / MANIFEST_NAME
    path.write_text(manifest.to_json() + "\n")
    return path
