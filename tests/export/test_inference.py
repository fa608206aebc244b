"""inference.onnx in every bundle, and the label-embedding head (MiniLM's zero-shot head).

inference.onnx must compute the training graph's scores with no A/D inputs and no probe
axis. The label-embedding head is checked against a PyTorch reference written here from
the sentence-transformers recipe (mean pooling, L2 normalisation, cosine x 20), on a fresh
encoder loaded from the model folder, not through the exporter's code.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import BUNDLES
from tokenizers import Tokenizer
from transformers import AutoModel, AutoTokenizer

from edge_zo.bundle import read_manifest
from edge_zo.cli import main
from edge_zo.errors import UserError
from edge_zo_export import checks, models, pipeline

pytestmark = pytest.mark.export

WORDS = ["terrible", "great"]


def run_inference(folder, manifest, batch) -> np.ndarray:
    session = ort.InferenceSession(str(folder / manifest.inference_file),
                                   providers=["CPUExecutionProvider"])
    feed = {k: v.numpy() for k, v in batch.items() if k != "labels"}
    feed.update({m.inputs["W"]: checks.read_weight(folder, m) for m in manifest.matrices})
    return session.run(["scores"], feed)[0]


def batch_for(manifest, shape, seed=3):
    return checks.example_batch(manifest.task, 1000, *shape, len(manifest.label_words), seed,
                                manifest.pad_token_id)


@pytest.fixture(scope="module")
def embedding_bundle(tmp_path_factory, tiny_folder):
    out = tmp_path_factory.mktemp("emb") / "bundle"
    code = main(["export", str(tiny_folder("bert")), "--task", "classification", "--head",
                 "label-embedding", "--label-words", *WORDS, "--rank", "2", "--out", str(out)])
    assert code == 0
    return out, read_manifest(out)


@pytest.mark.parametrize("name", list(BUNDLES))
def test_inference_graph_has_no_lowrank_inputs_and_matches_the_training_graph(bundle, name):
    folder, manifest = bundle(name)
    assert manifest.inference_file == "inference.onnx"
    graph = onnx.load(str(folder / manifest.inference_file), load_external_data=False).graph
    inputs = [i.name for i in graph.input]
    tokens = ["input_ids", "attention_mask"] + (["loss_mask"] if manifest.task == "causal-lm" else [])
    assert inputs == tokens + [m.inputs["W"] for m in manifest.matrices]
    assert [o.name for o in graph.output] == ["scores"]
    batch = batch_for(manifest, (4, 13))
    _, training = checks.run_bundle(folder, manifest, batch)  # D = 0, P = 1
    scores = run_inference(folder, manifest, batch)
    assert scores.shape == training.shape[1:] and scores.dtype == np.float32
    fp16 = manifest.matrices[0].dtype == "float16"
    np.testing.assert_allclose(scores, training[0], rtol=1e-2 if fp16 else 1e-5,
                               atol=1e-2 if fp16 else 1e-5)


def reference_scores(folder, batch, perturb=None) -> np.ndarray:
    """sentence-transformers' recipe: mean-pool, normalise, cosine with each label word's
    own embedding, times 20. The label embeddings are constants of the export: `perturb`
    changes the encoder of the text only."""
    encoder = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    text_encoder = encoder if perturb is None else perturb(encoder)
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def embed(ids, mask, model=encoder):
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return torch.nn.functional.normalize(pooled, dim=-1)

    with torch.no_grad():
        words = tokenizer(WORDS, return_tensors="pt", padding=True)
        labels = embed(words["input_ids"], words["attention_mask"])
        text = embed(batch["input_ids"], batch["attention_mask"], text_encoder)
        return (20.0 * text @ labels.T).numpy()


def test_label_embedding_head_matches_pytorch(embedding_bundle, tiny_folder):
    folder, manifest = embedding_bundle
    assert manifest.source["head"] == "label-embedding" and manifest.label_token_ids == []
    assert manifest.label_words == WORDS
    batch = batch_for(manifest, (4, 13))
    want = reference_scores(tiny_folder("bert"), batch)
    loss, scores = checks.run_bundle(folder, manifest, batch)
    np.testing.assert_allclose(scores[0], want, rtol=1e-4, atol=1e-4)
    ce = torch.nn.functional.cross_entropy(torch.from_numpy(want), batch["labels"])
    assert abs(loss[0] - float(ce)) < 1e-4
    np.testing.assert_allclose(run_inference(folder, manifest, batch), want, rtol=1e-4, atol=1e-4)


def test_label_embedding_head_with_random_A_D(embedding_bundle, tiny_folder):
    folder, manifest = embedding_bundle
    rng = np.random.default_rng(0)
    A = {m.name: (rng.standard_normal((m.shape[0], 2)) * 0.3).astype(np.float32) for m in manifest.matrices}
    D = {m.name: (rng.standard_normal((2, m.shape[1])) * 0.3).astype(np.float32) for m in manifest.matrices}
    batch = batch_for(manifest, (3, 9))
    want = reference_scores(tiny_folder("bert"), batch,
                            perturb=lambda enc: checks.perturbed(enc, manifest, A, D))
    _, scores = checks.run_bundle(folder, manifest, batch, A, {k: v[None] for k, v in D.items()})
    np.testing.assert_allclose(scores[0], want, rtol=1e-4, atol=1e-4)
    assert np.abs(scores[0] - run_inference(folder, manifest, batch)).max() > 1e-3  # A·D mattered


def test_auto_head_is_linear_unless_the_folder_has_a_classifier(tiny_folder):
    bert = models.resolve(str(tiny_folder("bert")))  # a BertForSequenceClassification folder
    assert pipeline.choose_head(bert, "classification", "auto") == "classifier"
    config = type(bert.config).from_dict({**bert.config.to_dict(), "architectures": ["BertModel"]})
    bare = dataclasses.replace(bert, config=config)  # what MiniLM's folder says
    assert pipeline.choose_head(bare, "classification", "auto") == "linear"
    assert pipeline.choose_head(bare, "classification", "label-embedding") == "label-embedding"
    assert pipeline.choose_head(bare, "classification", "classifier") == "classifier"
    llama = models.resolve(str(tiny_folder("llama")))
    assert pipeline.choose_head(llama, "classification", "auto") == "linear"
    assert pipeline.choose_head(llama, "classification", "label-words") == "label-words"
    assert pipeline.choose_head(llama, "causal-lm", "auto") == "causal-lm"
    with pytest.raises(UserError, match="use --head label-words"):
        pipeline.choose_head(llama, "classification", "label-embedding")
    with pytest.raises(UserError, match="--task causal-lm"):
        pipeline.choose_head(llama, "causal-lm", "linear")


def test_bundle_tokenizer_leaves_padding_and_truncation_to_the_runtime(tmp_path, tiny_folder):
    plain = Tokenizer.from_file(str(tiny_folder("bert") / "tokenizer.json"))
    source = Tokenizer.from_file(str(tiny_folder("bert") / "tokenizer.json"))
    source.enable_padding(length=32)  # as MiniLM's tokenizer.json ships: every text 128 long
    source.enable_truncation(8)
    source.save(str(tmp_path / "padded.json"))
    pipeline.write_tokenizer(tmp_path / "padded.json", tmp_path / "tokenizer.json")
    ours = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = "the plot is thin but the actors are good a great movie"
    assert ours.padding is None and ours.truncation is None
    assert len(source.encode(text).ids) == 32  # cut to 8, then padded to 32
    assert ours.encode(text).ids == plain.encode(text).ids
