"""What an exported bundle holds: its files, the graph's inputs and outputs as the manifest
says, no vocabulary-wide logits where the loss does not need them, opset and IR versions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import tiny_models
from conftest import BUNDLES
from transformers import AutoTokenizer

from safetensors.torch import load_file

from edge_zo.bundle import read_manifest
from edge_zo_export import checks

pytestmark = pytest.mark.export

VOCAB = 1000


def graph_of(folder):
    return onnx.load(str(folder / "model.onnx"), load_external_data=False)


def dims(value) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in value.type.tensor_type.shape.dim]


def vocab_tensors(folder) -> dict[str, list]:
    """Computed tensors (not weights) with a vocabulary-sized axis, after shape inference."""
    model = onnx.shape_inference.infer_shapes(graph_of(folder))
    weights = {t.name for t in model.graph.initializer}
    values = [*model.graph.value_info, *model.graph.output]
    found = {v.name: dims(v) for v in values if VOCAB in dims(v) and v.name not in weights}
    # [V, H] copies of the embedding / LM head are weights, not logits
    return {k: d for k, d in found.items() if len(d) != 2 or all(isinstance(x, str) for x in d[:1])}


@pytest.mark.parametrize("name", list(BUNDLES))
def test_bundle_holds_the_graph_manifest_and_tokenizer(bundle, name):
    folder, manifest = bundle(name)
    files = sorted(p.name for p in folder.iterdir())
    assert {"manifest.json", "model.onnx", "model.onnx.data", "tokenizer.json"} <= set(files)
    assert not [f for f in files if f.startswith(".")]
    assert read_manifest(folder) == manifest
    # The bundle's tokenizer encodes as the model folder's does (padding is the runtime's).
    from tokenizers import Tokenizer
    ours = Tokenizer.from_file(str(folder / "tokenizer.json"))
    theirs = Tokenizer.from_file(str(Path(manifest.source["path"]) / "tokenizer.json"))
    for text in tiny_models.SENTENCES:
        assert ours.encode(text).ids == theirs.encode(text).ids
    # What the device checks tokenizer.json by (issue 15): its hash and the embedding's rows
    from edge_zo.data import load_tokenizer
    assert manifest.source["tokenizer_sha256"] == hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()
    assert manifest.source["vocab_size"] == VOCAB
    load_tokenizer(folder, manifest)


@pytest.mark.parametrize("name", ["llama-cls", "opt-cls", "bert-cls", "gpt2-full16"])
def test_classification_graph_has_no_batch_seq_vocab_tensor(bundle, name):
    folder, _ = bundle(name)
    assert vocab_tensors(folder) == {}


def test_causal_lm_logits_only_at_scored_positions(bundle):
    # The check above can fail: the causal-lm graph does form logits, but only [P, K, V]
    # for the K scored tokens, never with the sequence axis.
    # (With the logit bias, export's causal-lm default, also b [V], the head's Gemm output
    # [P·K, V] and token_probs [P, V]: none has the sequence axis either.)
    found = vocab_tensors(bundle("gpt2-lm")[0])
    assert any(shape[0] == "probes" and len(shape) == 3 for shape in found.values()), found
    for shape in found.values():
        assert "seq" not in shape and "batch" not in shape and shape[-1] == VOCAB, shape


@pytest.mark.parametrize("name", list(BUNDLES))
def test_graph_inputs_and_outputs_follow_the_manifest(bundle, name):
    folder, manifest = bundle(name)
    graph = graph_of(folder).graph
    inputs = {v.name: v for v in graph.input}
    target = "labels" if manifest.task == "classification" else "loss_mask"
    expected = ["input_ids", "attention_mask", target]
    for mat in manifest.matrices:
        expected += [mat.inputs[role] for role in ("W", "A", "D") if role in mat.inputs]
        W = inputs[mat.inputs["W"]]
        assert dims(W) == list(mat.stored_shape)
        assert W.type.tensor_type.elem_type == onnx.helper.np_dtype_to_tensor_dtype(np.dtype(mat.dtype))
        if manifest.graph == "lowrank" and not mat.exact:
            m, n = mat.shape
            assert dims(inputs[mat.inputs["A"]]) == [m, manifest.rank]
            assert dims(inputs[mat.inputs["D"]]) == ["probes", manifest.rank, n]
    assert list(inputs) == expected
    outputs = {v.name: dims(v) for v in graph.output}
    assert outputs["loss"] == ["probes"] if manifest.graph == "lowrank" else len(outputs["loss"]) == 1
    scores = outputs["scores"]
    if manifest.task == "classification":
        assert scores[1:] == ["batch", len(manifest.label_words)]
    else:  # a causal-lm export's default logit bias: its gradient's sum, one per probe slot
        assert scores[1:] == ["batch"]
        assert manifest.logit_bias.shape == (1, VOCAB) and outputs["token_probs"] == ["probes", VOCAB]
    loss_type = next(v for v in graph.output if v.name == "loss").type.tensor_type.elem_type
    assert loss_type == onnx.TensorProto.FLOAT  # fp32 even for an fp16 model


@pytest.mark.parametrize("name, opset, ir", [("llama-cls", 20, 10), ("opt-cls", 18, 9)])
def test_opset_and_ir_version(bundle, name, opset, ir):
    folder, manifest = bundle(name)
    model = graph_of(folder)
    assert manifest.opset == opset and model.ir_version == ir
    assert {o.domain: o.version for o in model.opset_import}[""] == opset


@pytest.mark.parametrize("name", ["gpt2-lm", "gpt2-full16"])
def test_weights_in_the_data_file_are_the_models(bundle, name):
    folder, manifest = bundle(name)
    source = Path(manifest.source["path"])
    state = load_file(source / "model.safetensors")
    for mat in manifest.matrices:
        stored = checks.read_weight(folder, mat)
        if mat.exact:  # the causal-lm default's logit bias: not the model's, zero until trained
            assert stored.shape == (1, VOCAB) and not stored.any() and mat.weight_data["offset"] % 64 == 0
            continue
        assert mat.layout == "in_out" and stored.shape == mat.stored_shape  # GPT-2 Conv1D
        want = state[mat.name].to(torch.float16 if mat.dtype == "float16" else torch.float32)
        np.testing.assert_array_equal(stored, want.numpy())
        assert mat.weight_data["offset"] % 64 == 0


def test_manifest_records_source_labels_and_versions(bundle):
    folder, manifest = bundle("llama-cls")
    source = Path(manifest.source["path"])
    assert manifest.source["sha256"] == hashlib.sha256(
        b"model.safetensors" + (source / "model.safetensors").read_bytes()).hexdigest()
    assert manifest.source["architecture"] == "LlamaForCausalLM"
    tokenizer = AutoTokenizer.from_pretrained(source)
    assert manifest.label_token_ids == [tokenizer.convert_tokens_to_ids(w.strip())
                                        for w in manifest.label_words]
    assert manifest.pad_token_id == tokenizer.pad_token_id and manifest.padding_side == "right"
    assert manifest.exporter["torch"] == torch.__version__
    assert len(manifest.matrices) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    assert manifest.max_seq_len == 128  # the tiny model's positions bound the default 512
