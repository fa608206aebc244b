"""ONNX vs PyTorch, per architecture: the loss and scores of every exported graph.

The reference is the Hugging Face model's own forward with full logits (export/checks.py),
loaded fresh from the model folder, never the exporter's graph code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BUNDLES
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from edge_zo_export import checks

pytestmark = pytest.mark.export

LOWRANK = [name for name, (_, opts) in BUNDLES.items() if "fullrank" not in opts]
SHAPES = [(4, 13), (1, 5), (7, 20)]  # none is the (5, 11) the graph was traced with


def rel(a, b) -> float:
    return abs(float(a) - float(b)) / max(abs(float(b)), 1e-6)


def tolerance(manifest) -> float:
    return checks.TOLERANCE["fp16" if manifest.matrices[0].dtype == "float16" else "fp32"]


def reference_model(manifest):
    cls = AutoModelForSequenceClassification if manifest.source["head"] == "classifier" \
        else AutoModelForCausalLM
    dtype = torch.float16 if manifest.matrices[0].dtype == "float16" else torch.float32
    return cls.from_pretrained(manifest.source["path"], dtype=dtype,
                               attn_implementation="eager").eval()


def batch_for(manifest, shape, seed=1):
    return checks.example_batch(manifest.task, 1000, *shape, len(manifest.label_words), seed,
                                manifest.pad_token_id)


def random_lowrank(manifest, probes=None, seed=0):
    rng = np.random.default_rng(seed)
    A, D = {}, {}
    for mat in (mat for mat in manifest.matrices if "A" in mat.inputs):  # not the logit bias
        m, n = mat.shape
        A[mat.name] = (rng.standard_normal((m, manifest.rank)) * 0.3).astype(np.float32)
        lead = () if probes is None else (probes,)
        D[mat.name] = (rng.standard_normal((*lead, manifest.rank, n)) * 0.3).astype(np.float32)
    return A, D


def head(manifest):
    return manifest.source["head"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(BUNDLES))
def test_zero_delta_matches_pytorch(bundle, name, shape):
    folder, manifest = bundle(name)
    batch = batch_for(manifest, shape)
    want_loss, want_scores = checks.reference(reference_model(manifest), head(manifest),
                                              manifest.label_token_ids, batch)
    loss, scores = checks.run_bundle(folder, manifest, batch)
    assert loss.shape == (1,) and loss.dtype == np.float32
    assert rel(loss[0], want_loss) < tolerance(manifest)
    assert scores.shape == (1, *want_scores.shape)
    np.testing.assert_allclose(scores[0], want_scores, rtol=tolerance(manifest) * 10,
                               atol=tolerance(manifest) * 10)


@pytest.mark.parametrize("name", LOWRANK)
def test_random_A_D_match_pytorch_with_W_plus_AD(bundle, name):
    folder, manifest = bundle(name)
    batch = batch_for(manifest, (4, 13))
    A, D = random_lowrank(manifest)
    twin = checks.perturbed(reference_model(manifest), manifest, A, D)
    want_loss, want_scores = checks.reference(twin, head(manifest), manifest.label_token_ids, batch)
    loss, scores = checks.run_bundle(folder, manifest, batch, A, {k: v[None] for k, v in D.items()})
    base, _ = checks.run_bundle(folder, manifest, batch)
    assert rel(loss[0], base[0]) > 1e-3  # the perturbation really moved the loss
    assert rel(loss[0], want_loss) < 1e-5
    np.testing.assert_allclose(scores[0], want_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", LOWRANK)
def test_each_probe_slot_equals_its_single_probe_run(bundle, name):
    folder, manifest = bundle(name)
    batch = batch_for(manifest, (3, 9))
    A, D = random_lowrank(manifest, probes=3)
    loss, scores = checks.run_bundle(folder, manifest, batch, A, D)
    assert loss.shape == (3,) and scores.shape[0] == 3
    for p in range(3):
        one_loss, one_scores = checks.run_bundle(folder, manifest, batch, A,
                                                 {k: v[p:p + 1] for k, v in D.items()})
        assert rel(loss[p], one_loss[0]) < 1e-5
        np.testing.assert_allclose(scores[p], one_scores[0], rtol=1e-5, atol=1e-5)
    assert len({round(float(x), 6) for x in loss}) == 3  # the slots really differ


def test_fullrank_graph_takes_the_weights_as_they_are(bundle):
    folder, manifest = bundle("gpt2-full16")
    batch = batch_for(manifest, (4, 13))
    rng = np.random.default_rng(3)
    model = reference_model(manifest)
    feed_W = {}
    with torch.no_grad():
        for mat in manifest.matrices:
            W = checks.read_weight(folder, mat)
            feed_W[mat.name] = W + (rng.standard_normal(W.shape) * 0.05).astype(W.dtype)
            model.get_parameter(mat.name).copy_(torch.from_numpy(feed_W[mat.name]))
    want, _ = checks.reference(model, head(manifest), manifest.label_token_ids, batch)
    import onnxruntime as ort
    session = ort.InferenceSession(str(folder / manifest.model_file), providers=["CPUExecutionProvider"])
    feed = {k: v.numpy() for k, v in batch.items()}
    feed.update({mat.inputs["W"]: feed_W[mat.name] for mat in manifest.matrices})
    loss, _ = session.run(["loss", "scores"], feed)
    base, _ = checks.run_bundle(folder, manifest, batch)
    assert rel(loss[0], base[0]) > 1e-3
    assert rel(loss[0], want) < tolerance(manifest)
