"""`--head linear` on a language model (auto's choice): a trainable head on the last token.

It must start where label words start (the same ranking of the labels on every text, so
zero-shot accuracy is unchanged), give the linear probe features to fit, and deploy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_zo.bundle import read_manifest
from edge_zo.templates import default_template_name
from edge_zo.cli import main
from edge_zo.data import Example, load_tokenizer, make_batch
from edge_zo.runtime import Runtime

pytestmark = pytest.mark.export

TEXTS = ["a great movie", "a terrible movie", "it was great fun", "it was terrible", "the plot is thin",
         "what a waste of time", "great actors", "the actors are good and the music is fine"]


@pytest.fixture(scope="module")
def bundles(tiny_folder, bundle, tmp_path_factory):
    """(label-words bundle, linear bundle) of the same tiny Llama and label words; the
    linear one by export's default head (auto is linear on a language model)."""
    out = tmp_path_factory.mktemp("lm-linear") / "linear"
    assert main(["export", str(tiny_folder("llama")), "--task", "classification", "--label-words", " terrible",
                 " great", "--rank", "4", "--out", str(out)]) == 0
    return bundle("llama-cls")[0], out


def scores_of(folder, texts):
    manifest = read_manifest(folder)
    batch = make_batch([Example(t, i % 2) for i, t in enumerate(texts)], load_tokenizer(folder),
                       manifest.max_seq_len, manifest.pad_token_id)
    runtime = Runtime(folder)
    runtime.set_batch(batch.input_ids, batch.attention_mask, batch.labels)
    return runtime.scores(), runtime


def test_starts_with_the_label_words_ranking(bundles):
    words, linear = bundles
    manifest = read_manifest(linear)
    assert [m.name for m in manifest.matrices if m.dense] == ["linear_head.weight"]
    assert manifest.label_token_ids == read_manifest(words).label_token_ids  # the rows it starts from
    # a language model's head reads the prompt by default (issue 20), like its label words
    assert default_template_name(manifest) == default_template_name(read_manifest(words)) == "review"
    lw_scores, _ = scores_of(words, TEXTS)
    lin_scores, runtime = scores_of(linear, TEXTS)
    # Each text's label scores are the label-words logits times one positive number.
    np.testing.assert_array_equal(np.argmax(lin_scores, 1), np.argmax(lw_scores, 1))
    ratio = lin_scores / lw_scores
    np.testing.assert_allclose(ratio, ratio[:, :1].repeat(2, axis=1), rtol=1e-4)
    features = runtime.features()
    assert features.shape == (len(TEXTS), manifest.matrices[-1].shape[1])
    np.testing.assert_allclose(np.linalg.norm(features[:, :-1], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(features[:, -1], 1.0)


def test_linear_probe_fits_and_deploys(bundles, tmp_path):
    _, linear = bundles
    rows = [{"text": t, "label": "positive" if "great" in t or "good" in t else "negative"} for t in TEXTS] * 3
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    assert main(["finetune", "--bundle", str(linear), "--data", str(data), "--eval-data", str(data),
                 "--out", str(run), "steps=2", "batch_size=4", "template=review-plain"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    probe = next(r for r in records if r["kind"] == "linear_probe")
    assert probe["train_acc"] == 1.0  # 8 distinct texts, more features than texts: separable
    assert next(r for r in records if r["kind"] == "eval")["eval_acc"] == 1.0
    assert main(["deploy", str(run), "--out", str(tmp_path / "model.onnx")]) == 0
