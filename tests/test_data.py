"""Data: readers for JSONL/CSV/TSV, templates, bad rows named by line, MeZO sampling, batches."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from edge_zo.data import DataError, Example, load_classification, load_text, make_batch, mezo_split
from edge_zo.errors import UserError
from edge_zo.optim.base import ConfigError
from edge_zo.runconfig import load, resolve, save
from edge_zo.templates import TEMPLATES, ChoiceTemplate, Template, explicit_words, fit_template, user_template
from runtime.fixtures import build

REVIEW = TEMPLATES["review"]


def tokenizer() -> Tokenizer:
    words = "[PAD] [UNK] Review : Sentiment good bad film it was great terrible fine".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_csv_and_tsv_read_the_same(tmp_path):
    rows = [{"text": "good film", "label": "positive"}, {"text": "bad, film", "label": "negative"}]
    jsonl = write(tmp_path / "d.jsonl", [json.dumps(r) for r in rows])
    csv_ = write(tmp_path / "d.csv", ["text,label", '"good film",positive', '"bad, film",negative'])
    tsv = write(tmp_path / "d.tsv", ["text\tlabel", "good film\tpositive", "bad, film\tnegative"])
    loaded = [load_classification(p, REVIEW).examples for p in (jsonl, csv_, tsv)]
    assert loaded[0] == loaded[1] == loaded[2]
    assert loaded[0][1] == Example("Review: bad, film\nSentiment:", 0)


@pytest.mark.parametrize("line, reason", [
    ('{"text": "fine", "label": "positive"', "invalid JSON"),
    ('["fine", "positive"]', "expected a JSON object"),
    ('{"label": "positive"}', "missing field 'text'"),
    ('{"text": "fine", "label": "meh"}', "label 'meh' is not one of ['negative', 'positive']"),
    ('{"text": "   ", "label": "positive"}', "field 'text' is empty"),
])
def test_a_bad_row_names_file_line_and_reason(tmp_path, line, reason):
    path = write(tmp_path / "d.jsonl", ['{"text": "good", "label": "positive"}', "", line])
    with pytest.raises(DataError) as err:
        load_classification(path, REVIEW)
    assert f"{path}, line 3: {reason}" in str(err.value)
    skipped = load_classification(path, REVIEW, skip_bad=True)
    assert len(skipped.examples) == 1
    assert len(skipped.skipped) == 1 and skipped.skipped[0].startswith(f"line 3: {reason}")


def test_csv_line_numbers_count_the_header(tmp_path):
    path = write(tmp_path / "d.csv", ["text,label", "good,positive", "bad,awful"])
    with pytest.raises(DataError, match="line 3: label 'awful'"):
        load_classification(path, REVIEW)


def test_unsupported_or_empty_files(tmp_path):
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        load_classification(tmp_path / "d.txt", REVIEW)
    with pytest.raises(DataError, match="file not found"):
        load_classification(tmp_path / "none.jsonl", REVIEW)
    with pytest.raises(DataError, match="no usable rows"):
        load_classification(write(tmp_path / "d.jsonl", ["{}"]), REVIEW, skip_bad=True)


def test_boolq_template_capitalizes_and_reads_json_booleans(tmp_path):
    row = {"passage": "Cats purr.", "question": "do cats purr", "label": True}
    path = write(tmp_path / "b.jsonl", [json.dumps(row)])
    (ex,) = load_classification(path, TEMPLATES["boolq"]).examples
    assert ex == Example("Cats purr. Do cats purr?\n", 0)
    assert TEMPLATES["sst2"].label_words == [" terrible", " great"]


def test_mezo_split_is_seeded_and_disjoint():
    train, val = list(range(5000)), list(range(10_000, 10_300))
    a = mezo_split(train, val, seed=0)
    assert a == mezo_split(train, val, seed=0)
    assert a != mezo_split(train, val, seed=1)
    tr, dev, test = a
    assert (len(tr), len(dev), len(test)) == (1000, 500, 300)  # test: all of a small split
    assert not set(tr) & set(dev)


def test_batch_right_pads_and_cuts_long_prompts_from_the_left():
    ex = [Example("Review: good film\nSentiment:", 1), Example("Review: bad\nSentiment:", 0)]
    batch = make_batch(ex, tokenizer(), max_seq_len=4, pad_id=0)
    tok = tokenizer()
    # "Review : good film Sentiment :" is 6 tokens; the last 4 survive, the end included.
    assert batch.input_ids[0].tolist() == tok.encode("good film Sentiment :").ids
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]
    short = make_batch(ex[1:] + ex[:1], tok, max_seq_len=16, pad_id=0)
    assert short.attention_mask[0].sum() == 5 and short.input_ids[0, 5:].tolist() == [0]
    assert short.labels.tolist() == [0, 1]


def test_causal_lm_scores_only_the_completion(tmp_path):
    path = write(tmp_path / "t.jsonl", [json.dumps({"q": "Review: good", "a": "great film"})])
    data = load_text(path, text_field="a", prompt_field="q")
    batch = make_batch(data.examples, tokenizer(), max_seq_len=16, pad_id=0)
    assert batch.loss_mask.tolist() == [[0, 0, 0, 1, 1]]
    whole = make_batch(load_text(path, text_field="a").examples, tokenizer(), 16, 0)
    assert whole.loss_mask.tolist() == [[0, 1]]  # the first token has no predecessor


@pytest.mark.realdata
@pytest.mark.parametrize("task, file, rows", [
    ("sst2", "sst2/dev.tsv", 872), ("rte", "rte/val.jsonl", 277),
    ("cb", "cb/val.jsonl", 56), ("boolq", "boolq/val.jsonl", 3270),
])
def test_shared_datasets_load_with_their_templates(shared_data, task, file, rows):
    data = load_classification(shared_data / file, TEMPLATES[task])
    assert len(data.examples) == rows and not data.skipped
    counts = np.bincount([ex.label for ex in data.examples])
    assert len(counts) == len(TEMPLATES[task].labels) and counts.min() > 0


def test_template_label_words_follow_the_separator():
    t = Template("{x}", {"a": "Yes", "b": "No"}, separator="")
    assert t.label_words == ["Yes", "No"]


# ---- a template written in the run's config ---------------------------------------------

def test_a_user_template_from_a_config_file_round_trips(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('bundle = "b"\ndata = "d.jsonl"\ntemplate = "mine"\n'
                    'template_prompt = "Opinion: {text}\\nVerdict:"\n'
                    'template_labels = ["negative=bad", "positive=good"]\n')
    config = resolve(str(toml), {}, [])
    assert config.prompt_template() == Template("Opinion: {text}\nVerdict:", {"negative": "bad", "positive": "good"})
    save(config, tmp_path)  # paths are recorded absolute (edge_zo/runpaths.py)
    absolute = dataclasses.replace(config, bundle=str(Path("b").resolve()), data=str(Path("d.jsonl").resolve()))
    assert load(tmp_path) == absolute  # what --resume reads back


def test_a_user_template_from_overrides():
    base = {"bundle": "b", "data": "d.jsonl"}
    labels = resolve(None, base, ["template_prompt={text} =>", "template_labels=negative,positive",
                                  "template_separator="])
    assert labels.prompt_template() == Template("{text} =>", {"negative": "negative", "positive": "positive"}, "")
    choices = resolve(None, base, ["template_prompt=Q: {q}", "template_choices=a, b, c"])
    assert choices.prompt_template() == ChoiceTemplate("Q: {q}", ("a", "b", "c"))
    assert resolve(None, base, []).prompt_template() is None  # the bundle's default


@pytest.mark.parametrize("overrides, message", [
    (["template_prompt=no fields", "template_labels=a,b"], "has no {field} placeholder"),
    (["template_prompt={text", "template_labels=a,b"], "is not a valid pattern"),
    (["template_prompt={0}", "template_labels=a,b"], "each placeholder must name a field"),
    (["template_prompt={text}"], "needs exactly one of template_labels"),
    (["template_prompt={text}", "template_labels=a", "template_choices=c,d"], "needs exactly one of"),
    (["template_prompt={text}", "template_labels=a,a"], "label values must be distinct"),
    (["template=sst2", "template_prompt={text}", "template_labels=a,b"], "'sst2' is a built-in, but template_prompt"),
    (["template_labels=a,b"], "set template_prompt too"),
    (["template=mine"], "template='mine' is not one of sst2, rte, cb, boolq, copa"),
    (["template_labels.negative=bad"], "'template_labels.negative': only optimizer.KEY is dotted"),
])
def test_a_bad_user_template_is_refused_with_the_fix(overrides, message):
    with pytest.raises(ConfigError) as err:
        resolve(None, {"bundle": "b", "data": "d.jsonl"}, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


BUNDLE = SimpleNamespace(task="classification", label_words=[" bad", " good"])


def test_a_user_template_must_fit_the_bundles_label_words():
    three = user_template("{text}", ("a", "b", "c"))
    with pytest.raises(UserError, match=r"has 3 labels but the bundle was exported with 2 label words \[' bad', ' good'\]"):
        fit_template(three, BUNDLE, "mine")
    swapped = ("negative=good", "positive=bad")
    with pytest.raises(UserError, match="gives label 0 the word 'good', but the bundle's label word 0 is ' bad'"):
        fit_template(user_template("{text}", swapped), BUNDLE, "mine", explicit_words(swapped))
    right = ("negative=bad", "positive")
    assert fit_template(user_template("{text}", right), BUNDLE, "mine", explicit_words(right)).labels == \
        {"negative": "bad", "positive": "positive"}


def test_a_row_without_a_user_templates_field_is_a_bad_row(tmp_path):
    path = write(tmp_path / "d.jsonl", ['{"review": "good", "label": "positive"}', '{"text": "bad", "label": "negative"}'])
    with pytest.raises(DataError) as err:
        load_classification(path, user_template("Review: {review}", ("negative", "positive")))
    assert f"{path}, line 2: missing field 'review'" in str(err.value)


def test_finetune_with_a_user_template_saves_and_resumes_it(tmp_path):
    build(tmp_path / "bundle", max_seq_len=16)
    rows = [{"text": f"it was {w}", "label": "positive" if w == "good" else "negative"} for w in ["good", "bad"] * 8]
    write(tmp_path / "d.jsonl", [json.dumps(r) for r in rows])
    (tmp_path / "run.toml").write_text(
        f'bundle = "{tmp_path / "bundle"}"\ndata = "{tmp_path / "d.jsonl"}"\nsteps = 3\nbatch_size = 4\n'
        'template = "mine"\ntemplate_prompt = "{text} =>"\ntemplate_labels = ["negative=bad", "positive=good"]\n')
    cli = [sys.executable, "-m", "edge_zo.cli", "finetune"]
    run = subprocess.run(cli + ["--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["template_prompt"] == "{text} =>" and saved["template_labels"] == ["negative=bad", "positive=good"]
    resumed = subprocess.run(cli + ["--resume", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
