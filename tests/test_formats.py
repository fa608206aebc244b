"""Causal-LM data formats (chat, prompt/completion, Alpaca, text): rows to token pieces and a
loss mask on the response, auto-detection, bad rows named by line, runs and eval on each."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edge_zo import loop
from edge_zo.data import DataError, load_text, load_tokenizer, make_batch
from edge_zo.formats import ALPACA_INPUT, ALPACA_NO_INPUT, FALLBACK_TURN
from edge_zo.runtime import Runtime
from runtime.fixtures import build

UNK = 1
CHAT = {"messages": [{"role": "system", "content": "very good"}, {"role": "user", "content": "the movie"},
                     {"role": "assistant", "content": "great film"}]}
PROMPT = {"prompt": "the movie was", "completion": "very good"}
ALPACA = {"instruction": "the movie", "input": "", "output": "great film"}


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """The tiny causal-lm bundle (WordLevel tokenizer: '<|' 'user' '|>' are [UNK] each)."""
    return build(tmp_path_factory.mktemp("lm") / "bundle", task="causal-lm", max_seq_len=64)


def ids_of(lm, words: str) -> list[int]:
    return [lm.vocab.index(w) if w in lm.vocab else UNK for w in words.split()]


def one_batch(lm, path, **options):
    data = load_text(path, **options)
    return data, make_batch(data.examples, load_tokenizer(lm.path), 64, 0)


# ---- rows to a sequence and its mask -------------------------------------------------

def test_a_chat_row_scores_only_the_assistant_turn(lm, tmp_path):
    data, batch = one_batch(lm, write(tmp_path / "c.jsonl", [CHAT]))
    # <| system |> very good <| user |> the movie <| assistant |> | great film
    assert batch.input_ids[0].tolist() == [UNK] * 3 + ids_of(lm, "very good") + [UNK] * 3 + \
        ids_of(lm, "the movie") + [UNK] * 3 + ids_of(lm, "great film")
    assert batch.loss_mask[0].tolist() == [0] * 13 + [1, 1]
    assert data.examples[0].pieces == (("<|system|>\nvery good\n<|user|>\nthe movie\n<|assistant|>\n", False),
                                       ("great film\n", True))
    assert "read as chat rows (detected from the first row's fields ['messages']" in data.note
    assert "loss on the assistant turns only" in data.note


def test_every_assistant_turn_of_a_conversation_is_scored(lm, tmp_path):
    row = {"messages": [{"role": "user", "content": "the movie"}, {"role": "assistant", "content": "good"},
                        {"role": "user", "content": "it"}, {"role": "assistant", "content": "very bad"}]}
    _, batch = one_batch(lm, write(tmp_path / "c.jsonl", [row]))
    # <| user |> the movie <| assistant |> good <| user |> it <| assistant |> very bad
    assert batch.loss_mask[0].tolist() == [0] * 8 + [1] + [0] * 7 + [1, 1]
    assert batch.input_ids[0, 8] == lm.vocab.index("good") and batch.input_ids[0, 16] == lm.vocab.index("very")


def test_prompt_completion_and_alpaca_rows(lm, tmp_path):
    data, batch = one_batch(lm, write(tmp_path / "p.jsonl", [PROMPT]))
    assert batch.input_ids[0].tolist() == ids_of(lm, "the movie was very good")
    assert batch.loss_mask[0].tolist() == [0, 0, 0, 1, 1] and "read as prompt-completion rows" in data.note
    with_input = dict(ALPACA, input="it was bad")
    data, batch = one_batch(lm, write(tmp_path / "a.jsonl", [ALPACA, with_input]))
    assert data.examples[0].pieces == ((ALPACA_NO_INPUT.format(instruction="the movie"), False), ("great film", True))
    assert data.examples[1].pieces[0][0] == ALPACA_INPUT.format(instruction="the movie", input="it was bad")
    assert data.examples[1].pieces[0][0].startswith("Below is an instruction that describes a task, paired with")
    assert data.examples[1].pieces[0][0].endswith("### Input:\nit was bad\n\n### Response:\n")
    for row in range(2):  # the output's two tokens, at the end
        n = int(batch.attention_mask[row].sum())
        assert batch.loss_mask[row].tolist()[:n] == [0] * (n - 2) + [1, 1]
        assert batch.input_ids[row, n - 2:n].tolist() == ids_of(lm, "great film")
    assert "read as alpaca rows" in data.note and "loss on the output only" in data.note


def test_plain_text_is_read_as_before(lm, tmp_path):
    data, batch = one_batch(lm, write(tmp_path / "t.jsonl", [{"text": "the movie was good"}]))
    assert batch.loss_mask[0].tolist() == [0, 1, 1, 1] and "read as text rows" in data.note
    data, batch = one_batch(lm, write(tmp_path / "q.jsonl", [PROMPT]), text_field="completion",
                            prompt_field="prompt")  # fields set for text: not auto-detected
    assert batch.loss_mask[0].tolist() == [0, 0, 0, 1, 1] and "text_field='completion'" in data.note


def test_changing_the_prompt_keeps_the_mask_count_and_loss_on_prompt_scores_all(lm, tmp_path):
    other = {"messages": [dict(CHAT["messages"][0], content="not very good at all"),
                          dict(CHAT["messages"][1], content="a film"), CHAT["messages"][2]]}
    _, a = one_batch(lm, write(tmp_path / "a.jsonl", [CHAT]))
    _, b = one_batch(lm, write(tmp_path / "b.jsonl", [other]))
    assert a.input_ids.shape != b.input_ids.shape and a.loss_mask.sum() == b.loss_mask.sum() == 2
    _, whole = one_batch(lm, write(tmp_path / "c.jsonl", [CHAT]), loss_on_prompt=True)
    assert np.array_equal(whole.input_ids, a.input_ids)  # the same tokens, every one scored but the first
    assert whole.loss_mask[0].tolist() == [0] + [1] * 14


def test_a_long_conversation_is_cut_from_the_left_with_its_mask(lm, tmp_path):
    data = load_text(write(tmp_path / "c.jsonl", [CHAT]))
    batch = make_batch(data.examples, load_tokenizer(lm.path), 4, 0)
    assert batch.input_ids[0].tolist() == [UNK, UNK] + ids_of(lm, "great film")
    assert batch.loss_mask[0].tolist() == [0, 0, 1, 1]


# ---- detection, choice, bad rows --------------------------------------------------------

@pytest.mark.parametrize("row, fmt", [(CHAT, "chat"), (PROMPT, "prompt-completion"), (ALPACA, "alpaca"),
                                      ({"instruction": "x", "output": "y"}, "alpaca"),
                                      ({"text": "the movie"}, "text")])
def test_the_format_is_read_off_the_first_row(tmp_path, row, fmt):
    assert f"read as {fmt} rows (detected from" in load_text(write(tmp_path / "d.jsonl", [row])).note


def test_a_chosen_format_overrides_detection(tmp_path):
    data = load_text(write(tmp_path / "d.jsonl", [dict(PROMPT, text="the movie")]), data_format="text")
    assert data.examples[0].pieces == (("the movie", True),) and "(data_format=text)" in data.note


@pytest.mark.parametrize("rows, options, reason", [
    ([CHAT, {"messages": [{"role": "bot", "content": "hi"}]}], {}, "message 1 has role 'bot', not one of system"),
    ([CHAT, {"messages": [{"role": "user", "content": "hi"}]}], {}, "no assistant message: nothing to learn from"),
    ([CHAT, {"messages": [{"role": "assistant"}]}], {}, "message 1 (assistant) has no content"),
    ([CHAT, {"messages": "[{"}], {}, "field 'messages' is not a JSON list"),
    ([CHAT, {"messages": []}], {}, "field 'messages' must be a non-empty list"),
    ([CHAT, PROMPT], {}, "missing field 'messages' (fields: ['completion', 'prompt']) (chat rows: detected from the "
                         "first row's fields ['messages']"),
    ([ALPACA, {"instruction": "x", "input": "y"}], {}, "missing field 'output'"),
    ([ALPACA, {"instruction": "x", "input": 3, "output": "z"}], {}, "field 'input' is int, not text"),
    ([PROMPT, {"prompt": "x", "completion": ""}], {}, "field 'completion' is empty"),
    ([CHAT, CHAT], {"data_format": "prompt-completion"}, "missing field 'prompt' (fields: ['messages']) "
                                                         "(prompt-completion rows: data_format=prompt-completion)"),
])
def test_a_row_that_does_not_fit_names_file_and_line(tmp_path, rows, options, reason):
    path = write(tmp_path / "d.jsonl", rows)
    line = 1 if options else 2
    with pytest.raises(DataError) as err:
        load_text(path, **options)
    assert f"{path}, line {line}: {reason}" in str(err.value) and "\n" not in str(err.value)
    if not options:
        assert len(load_text(path, skip_bad=True).skipped) == 1


def test_chat_rows_from_a_csv_cell(lm, tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('messages\n"' + json.dumps(CHAT["messages"]).replace('"', '""') + '"\n')
    assert load_text(path).examples == load_text(write(tmp_path / "c.jsonl", [CHAT])).examples


# ---- eval and runs ---------------------------------------------------------------------

def test_eval_nll_is_over_the_response_tokens_only(lm, tmp_path):
    rows = [CHAT, {"messages": [{"role": "user", "content": "it was"}, {"role": "assistant", "content": "bad"}]}]
    path = write(tmp_path / "c.jsonl", rows)
    tokenizer, runtime = load_tokenizer(lm.path), Runtime(lm.path)
    X = {m.name: lm.effective(m.name, lm.weights[m.name]) for m in lm.manifest.matrices}
    losses = {}
    for on_prompt in (False, True):
        examples = load_text(path, loss_on_prompt=on_prompt).examples
        batch = make_batch(examples, tokenizer, 64, 0)
        got = loop.evaluate(runtime, None, examples, tokenizer, lm.manifest, batch_size=8)["eval_loss"]
        want, _ = lm.reference({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                                "loss_mask": batch.loss_mask}, X)
        assert got == pytest.approx(want, rel=1e-4)
        losses[on_prompt] = got
    assert abs(losses[False] - losses[True]) > 1e-3  # the prompt's tokens are not in the masked NLL


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_zo.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name, row", [("chat", CHAT), ("prompt-completion", PROMPT), ("alpaca", ALPACA)])
def test_finetune_and_eval_run_on_each_format(lm, tmp_path, name, row):
    data = write(tmp_path / "train.jsonl", [row] * 6)
    result = cli("finetune", "--bundle", str(lm.path), "--data", str(data), "--eval-data", str(data),
                 "--out", str(tmp_path / "run"), "--steps", "4", "batch_size=2", "eval_every=2")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if f"read as {name} rows" in line]
    assert len(notes) == 2, result.stderr  # once per file: training and eval data
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 4] and all(np.isfinite(r["eval_loss"]) for r in evals)
    masked, whole = (json.loads(cli("eval", "--run", str(tmp_path / "run"), "--data", str(data),
                                    *extra).stdout)["eval_loss"] for extra in ((), ("loss_on_prompt=true",)))
    assert masked != pytest.approx(whole, rel=1e-3)


def test_a_bad_format_key_and_a_format_on_a_template_run_are_refused(lm, tmp_path):
    data = write(tmp_path / "d.jsonl", [CHAT])
    result = cli("finetune", "--bundle", str(lm.path), "--data", str(data), "--out", str(tmp_path / "r"),
                 "data_format=sharegpt")
    assert result.returncode != 0 and "data_format='sharegpt' must be one of auto, text, chat" in result.stderr
    result = cli("eval", "--bundle", str(lm.path), "--data", str(data), "--template", "copa", "data_format=chat")
    assert result.returncode != 0 and "drop data_format" in result.stderr


def test_a_run_from_before_data_formats_resumes_reading_text(lm, tmp_path):
    from edge_zo.runconfig import load, resolve, save
    (tmp_path / "run").mkdir()
    save(resolve(None, {"bundle": str(lm.path), "data": "d.jsonl"}, []), tmp_path / "run")
    path = tmp_path / "run" / "config.json"
    values = json.loads(path.read_text())
    assert values["data_format"] == "auto"
    del values["data_format"]  # as such a run's config.json is
    path.write_text(json.dumps(values))
    assert load(tmp_path / "run").data_format == "text"
