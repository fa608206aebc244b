"""One export, start to finish: options -> model -> graph -> bundle folder, all or nothing.

The bundle is written into a hidden sibling folder and renamed into place only when it is
complete (graph, appended weights, tokenizer, manifest, parity check); with --force the
old folder is replaced only then. Any failure removes the partial folder.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edge_zo.bundle import TOKENIZER_NAME, Manifest, TrainedMatrix, tokenizer_sha256, write_manifest
from edge_zo.errors import UserError
from edge_zo.leftovers import remove_stale_partials, staging_path
from edge_zo_export import checks, heads, models, quantize, vocab
from edge_zo_export.graph import IR_FOR_OPSET, LiftedInput, append_weights, export_graph
from edge_zo_export.heads import TrainingGraph
from edge_zo_export.inference import INFERENCE_FILE, check_inference, write_inference
from edge_zo_export.lowrank import (FULLRANK_ROLES, LOWRANK_ROLES, functional_keys, graph_input_names,
                            inject, layout_of, matrix_shape)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
MODEL_FILE = "model.onnx"
DEFAULT_SEQ_LEN = 512
MIN_SEQ_LEN = 16  # above the traced length, 11
ENCODER_HEADS = ("linear", "label-embedding")  # heads for a bare sentence-embedding encoder


@dataclass
class ExportOptions:
    model: str
    task: str
    out: Path
    targets: list[str] = field(default_factory=list)  # empty: the architecture's default
    rank: int = 8
    probe_slots: int = 4
    dtype: str = "fp32"
    max_seq_len: int | None = None  # None: min(512, the model's positions)
    opset: int = 20
    label_words: list[str] = field(default_factory=list)
    head: str = "auto"
    graph: str = "lowrank"
    weights: str = "fp32"  # fp32 | int8 | int4: the low-rank matrices' base W (edge_zo_export/quantize.py)
    adapter_rank: int | None = None  # R of a quantized bundle's adapter; None: 4 x rank
    # causal-lm: a [1, V] logit bias the loop trains by its exact gradient; None: on for a fp32
    # causal-lm export (the measured winner, benchmarks/README.md section 6), off otherwise
    logit_bias: bool | None = None
    force: bool = False
    check: bool = True


@dataclass
class Prepared:
    """What the graph and manifest are built from."""

    source: models.Source
    model: torch.nn.Module
    head: str
    targets: list[str]  # parameter names, the dense ones (`dense`) last
    tokenizer_file: Path
    labels: vocab.Labels
    label_embeddings: torch.Tensor | None = None  # label-embedding, linear heads: [C, H] unit rows
    dense: list[str] = field(default_factory=list)  # trained with a W input only (linear head)
    exact: list[str] = field(default_factory=list)  # W input only, trained by the loop (logit bias)

    @property
    def lowrank_modules(self) -> list[str]:
        """The layers that take A and D in a low-rank graph."""
        return [name.rsplit(".", 1)[0] for name in self.targets if name not in self.dense + self.exact]

    def core(self, modules: list[str]) -> TrainingGraph:
        return TrainingGraph(self.model, self.head, modules, self.labels.token_ids,
                             self.label_embeddings, last_token=self.source.arch.causal).eval()


def export_bundle(opts: ExportOptions) -> Manifest:
    validate_options(opts)
    prep = prepare(opts)
    remove_stale_partials(opts.out)  # staging folders of exports killed before their rename
    staging = staging_path(opts.out)
    staging.mkdir(parents=True)
    try:
        manifest = write_bundle(prep, opts, staging)
        _move_into_place(staging, opts.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def export_inference_graph(opts: ExportOptions, path: Path) -> None:
    """The same loss head with every weight an initializer: what the training graph's
    overhead is measured against (benchmarks/forward.py)."""
    validate_options(opts)
    prep = prepare(opts)
    batch = trace_batch(prep, opts)
    export_graph(prep.core([]), opts.task, [], path, opts.opset, batch, _dims(opts))


def validate_options(opts: ExportOptions) -> None:
    if opts.out.exists() and not opts.force:
        raise UserError(f"{opts.out} already exists; choose another --out or pass --force to replace it")
    if opts.graph == "lowrank" and opts.rank < 1:
        raise UserError(f"--rank must be at least 1, got {opts.rank}")
    if opts.probe_slots < 1:
        raise UserError(f"--probe-slots must be at least 1, got {opts.probe_slots}")
    if opts.max_seq_len is not None and opts.max_seq_len < MIN_SEQ_LEN:
        raise UserError(f"--max-seq-len must be at least {MIN_SEQ_LEN}, got {opts.max_seq_len}")
    if opts.weights != "fp32":
        quantize.validate(opts)
    if opts.opset not in IR_FOR_OPSET:
        raise UserError(f"--opset {opts.opset} is not supported; use 20, or 18 for onnxruntime <= 1.16")
    if opts.logit_bias is None:
        opts.logit_bias = opts.task == "causal-lm" and opts.weights == "fp32"
    if opts.logit_bias and opts.task != "causal-lm":
        raise UserError(f"--logit-bias adds a bias to a language model's next-token logits: it needs "
                        f"--task causal-lm, not {opts.task}; drop --logit-bias")
    if opts.logit_bias and opts.weights != "fp32":
        raise UserError(f"--logit-bias with --weights {opts.weights} is not supported yet (the quantized "
                        "export freezes the LM head it is added to); export with --weights fp32, or drop --logit-bias")


def prepare(opts: ExportOptions) -> Prepared:
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # "Loading weights" bars would bury our one-line report
    source = models.resolve(opts.model)
    opts.max_seq_len = _check_seq_len(source, opts.max_seq_len)
    head = choose_head(source, opts.task, opts.head)
    tokenizer_file, tokenizer = vocab.load_tokenizer(source.folder)
    labels = vocab.labels_for(opts, head, tokenizer, source.config, source.arch.causal)
    embeddings = None
    if head in ENCODER_HEADS and not source.arch.causal:
        model = load_encoder(source, DTYPES[opts.dtype], labels.pad_token_id)
        embeddings = heads.label_embeddings(model, tokenizer, labels.words)
    else:
        model = models.load_model(source, head, len(labels.words), DTYPES[opts.dtype], labels.pad_token_id)
    if head == "linear" and source.arch.causal:
        embeddings = heads.label_rows(model, labels.token_ids)
    eligible = models.eligible_matrices(model, head)
    targets = models.select_targets(eligible, opts.targets or list(source.arch.default_targets))
    if opts.graph == "lowrank":
        models.check_rank(eligible, targets, opts.rank)
    # Added after target selection: the head is always trained, and never low-rank (a C x H
    # matrix with C = 2 labels has no rank-r perturbation for any useful r).
    dense = [heads.add_linear_head(model, embeddings)] if head == "linear" else []
    exact = [heads.add_logit_bias(model)] if opts.logit_bias else []
    return Prepared(source, model, head, targets + dense + exact, tokenizer_file, labels, embeddings, dense, exact)


def choose_head(source: models.Source, task: str, head: str) -> str:
    """models.choose_head, plus the heads on features: `linear` (auto's choice for a model
    without a trained classification head) and `label-embedding` (an encoder's zero-shot
    cosine, nothing to fit). On an encoder such as MiniLM a fresh classifier would score at
    random; on a language model the linear head reads the last token and starts as the label
    words' scores, and the linear probe it allows lifted SmolLM2-135M on SST-2 from 0.804 to
    0.871 ± 0.007 (3 seeds, benchmarks/README.md "Quality"); a fit no better held out keeps
    the label words' head."""
    if task == "classification" and head == "auto" and not models._is_sequence_classifier(source.config):
        return "linear"
    if head not in ENCODER_HEADS:
        return models.choose_head(source, task, head)
    if task != "classification" or (source.arch.causal and head != "linear"):
        raise UserError(f"--head {head} needs --task classification on a sentence-embedding encoder "
                        f"(BERT / MiniLM){' or a language model' if head == 'linear' else ''}, "
                        f"not {source.model_type} with --task {task}; use --head label-words on a language model")
    return head


def load_encoder(source: models.Source, dtype: torch.dtype, pad_token_id: int) -> torch.nn.Module:
    """The bare encoder (no head) for the encoder heads."""
    from transformers import AutoModel
    model = AutoModel.from_pretrained(source.folder, dtype=dtype, attn_implementation="eager")
    model.config.pad_token_id = pad_token_id
    return model.eval()


def _check_seq_len(source: models.Source, max_seq_len: int | None) -> int:
    limit = getattr(source.config, source.arch.positions, None) if source.arch.positions else None
    if max_seq_len is None:
        return min(DEFAULT_SEQ_LEN, limit or DEFAULT_SEQ_LEN)
    if limit is not None and max_seq_len > limit:
        raise UserError(f"--max-seq-len {max_seq_len} exceeds the model's {limit} positions; "
                        f"use --max-seq-len {limit} or less")
    return max_seq_len


def write_bundle(prep: Prepared, opts: ExportOptions, folder: Path) -> Manifest:
    batch = trace_batch(prep, opts)
    reference = _reference(prep, batch) if opts.check else None
    # The same Parameter objects stay in the model after inject(): no copy needed.
    weights = {name: prep.model.get_parameter(name).detach() for name in prep.targets}
    # inference.onnx first: build_graph injects the low-rank layers into prep.model.
    inference_path = folder / INFERENCE_FILE
    write_inference(prep.core([]), opts.task, weights, inference_path, opts.opset, batch, _dims(opts))
    if reference is not None:
        check_inference(inference_path, opts.task, weights, batch, reference[1], opts.dtype)
    core, lifted = build_graph(prep, opts)
    model_path = folder / MODEL_FILE
    export_graph(core, opts.task, lifted, model_path, opts.opset, batch, _dims(opts))
    records = append_weights(model_path, [weights[name] for name in prep.targets])
    write_tokenizer(prep.tokenizer_file, folder / TOKENIZER_NAME)
    manifest = make_manifest(prep, opts, weights, records, INFERENCE_FILE,
                             tokenizer_sha256((folder / TOKENIZER_NAME).read_bytes()))
    write_manifest(folder, manifest)
    if reference is not None:
        checks.check_bundle(folder, manifest, batch, reference, opts.dtype)
    if opts.weights != "fp32":
        manifest = quantize.quantize_bundle(folder, manifest, opts.weights, opts.adapter_rank,
                                            batch if opts.check else None)
    return manifest


def _reference(prep: Prepared, batch: dict) -> tuple:
    if prep.head == "linear" and prep.source.arch.causal:
        return heads.last_token_linear_reference(prep.model, batch)
    if prep.head in ENCODER_HEADS:  # a linear head starts as the label-embedding scores
        return heads.label_embedding_reference(prep.model, prep.label_embeddings, batch)
    return checks.reference(prep.model, prep.head, prep.labels.token_ids, batch)


def write_tokenizer(source: Path, target: Path) -> None:
    """tokenizer.json without its own padding and truncation: the runtime pads and cuts
    (data.make_batch). MiniLM's file pads every text to 128 tokens, which would hand the
    runtime 128 ids per row, the last of them [PAD] with an attention mask of 1."""
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(source))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.save(str(target))


def trace_batch(prep: Prepared, opts: ExportOptions) -> dict:
    """The batch traced and checked with. B = 5, T = 11 and P = 3 (build_graph): none is 1
    (the exporter would specialise it) and they differ, so it cannot equate them."""
    return checks.example_batch(opts.task, prep.model.config.vocab_size, 5, 11,
                                len(prep.labels.words), seed=0, pad_token_id=prep.labels.pad_token_id)


def build_graph(prep: Prepared, opts: ExportOptions) -> tuple[TrainingGraph, list[LiftedInput]]:
    modules = prep.lowrank_modules
    lowrank = opts.graph == "lowrank"
    if lowrank:
        inject(prep.model, modules, opts.rank)
    core = prep.core(modules if lowrank else [])
    probes = torch.export.Dim("probes", min=1)
    lifted = []
    for name in prep.targets:
        roles = matrix_roles(prep, opts, name)
        if name in prep.exact:  # a parameter of the model itself, not of a layer
            examples = {"W": prep.model.get_parameter(name).detach()}
        else:
            layer = prep.model.get_submodule(name.rsplit(".", 1)[0])
            examples = {"W": layer.weight.detach()}
        if "A" in roles:
            examples.update(A=layer.A, D=torch.zeros(3, *layer.D.shape[1:]))
        names, keys = graph_input_names(name, roles), functional_keys(name, roles)
        lifted += [LiftedInput(names[r], f"model.{keys[r]}", examples[r],
                               {0: probes} if r == "D" else {}) for r in roles]
    return core, lifted


def matrix_roles(prep: Prepared, opts: ExportOptions, name: str) -> tuple[str, ...]:
    """Graph inputs of one trained matrix: W, A, D in a low-rank graph; W alone when dense or exact."""
    return LOWRANK_ROLES if opts.graph == "lowrank" and name not in prep.dense + prep.exact else FULLRANK_ROLES


def _dims(opts: ExportOptions) -> dict:
    return {"batch": torch.export.Dim("batch", min=1),
            "seq": torch.export.Dim("seq", min=2, max=opts.max_seq_len)}


def make_manifest(prep: Prepared, opts: ExportOptions, weights: dict, records: list[dict],
                  inference_file: str = "", tokenizer_hash: str = "") -> Manifest:
    lowrank = opts.graph == "lowrank"
    matrices = []
    for name, record in zip(prep.targets, records):
        layer = prep.model.get_submodule(name.rsplit(".", 1)[0]) if name not in prep.exact else None
        matrices.append(TrainedMatrix(
            name=name, shape=matrix_shape(layer) if layer else tuple(weights[name].shape),
            layout=layout_of(layer) if layer else "out_in",
            dtype=str(weights[name].dtype).removeprefix("torch."),
            inputs=graph_input_names(name, matrix_roles(prep, opts, name)), weight_data=record,
            dense=name in prep.dense, exact=name in prep.exact))
    return Manifest(
        task=opts.task, graph=opts.graph, rank=opts.rank if lowrank else 0,
        probe_slots=opts.probe_slots if lowrank else 1, max_seq_len=opts.max_seq_len,
        matrices=matrices, opset=opts.opset, model_file=MODEL_FILE,
        source={"model": prep.source.name, "path": str(prep.source.folder.resolve()),
                "architecture": type(prep.model).__name__, "model_type": prep.source.model_type,
                "head": prep.head, "sha256": models.weights_sha256(prep.source.folder),
                # the device refuses another model's tokenizer.json by these (edge_zo/data.py)
                "tokenizer_sha256": tokenizer_hash, "vocab_size": int(prep.model.config.vocab_size)},
        exporter=checks.versions(),
        label_words=prep.labels.words, label_token_ids=prep.labels.token_ids,
        pad_token_id=prep.labels.pad_token_id, padding_side="right", inference_file=inference_file)


def _move_into_place(staging: Path, out: Path) -> None:
    if not out.exists():
        staging.rename(out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
