"""Data: readers for JSONL/CSV/TSV, templates, bad rows named by line, MeZO sampling, batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from edge_zo.data import (TEMPLATES, DataError, Example, Template, load_classification,
                          load_text, make_batch, mezo_split)

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
