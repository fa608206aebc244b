"""Multiple choice (COPA): prompts, per-row probe scores, the candidate loss, accuracy, a run."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from edge_zo import choice, evaluation
from edge_zo.checkpoint import load_latest
from edge_zo.data import (ChoiceExample, ChoiceLayout, DataError, load_choice, load_tokenizer,
                          make_choice_batch)
from edge_zo.rng import Key
from edge_zo.runtime import Runtime
from edge_zo.templates import TEMPLATES
from runtime.conftest import FullRankProbe, random_probes, random_sketch
from runtime.fixtures import build

COPA = TEMPLATES["copa"]


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ---- the template ----------------------------------------------------------------------

def test_copa_prompts_are_written_as_design_says(tmp_path):
    rows = [{"premise": "The girl found a bug in her cereal.", "choice1": "She poured milk in the bowl.",
             "choice2": "She lost her appetite.", "question": "effect", "label": 1},
            {"premise": "My body cast a shadow over the grass.", "choice1": "The sun was rising.",
             "choice2": "I was sobbing.", "question": "cause", "label": 0}]
    a, b = load_choice(write(tmp_path / "copa.jsonl", rows), COPA).examples
    assert a == ChoiceExample("The girl found a bug in her cereal so",
                              (" she poured milk in the bowl.", " she lost her appetite."), 1)
    assert b == ChoiceExample("My body cast a shadow over the grass because",
                              (" the sun was rising.", " I was sobbing."), 0)
    assert a.prompt + a.candidates[1] == "The girl found a bug in her cereal so she lost her appetite."


@pytest.mark.parametrize("row, reason", [
    ({"premise": "It rained.", "choice1": "A.", "choice2": "B.", "question": "why", "label": 0},
     "field 'question' is 'why', not one of ['cause', 'effect']"),
    ({"premise": "It rained.", "choice1": "A.", "choice2": "B.", "question": "cause", "label": 2},
     "label '2' is not a candidate index 0..1"),
    ({"premise": "It rained.", "choice1": "A.", "question": "cause", "label": 0}, "missing field 'choice2'"),
])
def test_a_bad_copa_row_names_file_and_line(tmp_path, row, reason):
    good = {"premise": "It rained.", "choice1": "A.", "choice2": "B.", "question": "cause", "label": 0}
    path = write(tmp_path / "copa.jsonl", [good, row])
    with pytest.raises(DataError) as err:
        load_choice(path, COPA)
    assert f"{path}, line 2: {reason}" in str(err.value)
    assert len(load_choice(path, COPA, skip_bad=True).skipped) == 1


@pytest.mark.realdata
def test_the_shared_copa_validation_file_loads(shared_data):
    data = load_choice(shared_data / "copa" / "val.jsonl", COPA)
    assert len(data.examples) == 100 and not data.skipped
    assert data.examples[0] == ChoiceExample("The man turned on the faucet so",
                                             (" the toilet filled with water.", " water flowed from the spout."), 1)


# ---- loss and accuracy from per-row NLL -----------------------------------------------

def test_accuracy_uses_the_mean_not_the_summed_nll():
    # Candidate 0: 3.0 nats over 1 token; candidate 1: 4.0 nats over 4 tokens (1.0 a token).
    nll = np.array([3.0, 4.0])
    mask = np.array([[0, 1, 0, 0, 0], [0, 1, 1, 1, 1]], np.float32)
    layout = ChoiceLayout((2,), np.array([1]))
    loglik = choice.mean_loglik(nll, mask)
    assert np.argmin(nll) == 0 and choice.correct(loglik, layout) == 1
    assert choice.candidate_ce(loglik, layout)[0] == pytest.approx(np.log1p(np.exp(-2.0)))


def numpy_ce(nll: np.ndarray, tokens: np.ndarray, sizes, labels) -> float:
    """The candidate cross-entropy written out plainly, one example at a time."""
    out, start = [], 0
    for size, label in zip(sizes, labels):
        logits = -nll[start:start + size] / tokens[start:start + size]
        out.append(-(logits[label] - np.log(np.sum(np.exp(logits)))))
        start += size
    return float(np.mean(out))


EXAMPLES = [ChoiceExample("the movie was", (" good", " very bad plot"), 0),
            ChoiceExample("a film is", (" fine", " awful", " not great actor"), 2),  # 3 candidates
            ChoiceExample("it was", (" bad", " good"), 1)]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return build(tmp_path_factory.mktemp("lm"), task="causal-lm", probe_slots=2)


def test_the_oracle_loss_is_the_candidate_ce_of_each_probes_rows(lm):
    rt = Runtime(lm.path)
    batch = make_choice_batch(EXAMPLES, load_tokenizer(lm.path), lm.manifest.max_seq_len, 0)
    assert batch.input_ids.shape[0] == 7 and batch.choice.sizes == (2, 3, 2)
    rt.set_batch(batch.input_ids, batch.attention_mask, batch.labels, batch.loss_mask)
    A = random_sketch(rt.shapes, lm.manifest.rank, seed=1)
    rt.set_sketch(0, A)
    probes = random_probes(rt.shapes, lm.manifest.rank, count=3, seed=2, scale=0.5)  # 2 runs of 2 slots
    losses = choice.ChoiceOracle(rt, batch).losses(probes)
    feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "loss_mask": batch.loss_mask}
    tokens = batch.loss_mask.sum(1)
    expected = []
    for p in probes:  # an independent float64 forward of the same effective weights
        X = {n: lm.effective(n, lm.weights[n]).astype(np.float64) + A[n] @ p.D[n] for n in lm.weights}
        expected.append(numpy_ce(lm.reference(feeds, X)[1], tokens, batch.choice.sizes, batch.choice.labels))
    assert losses.dtype == np.float32
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    assert len(set(losses.tolist())) == 3
    rt.set_probe_slots(1)  # one probe a run: the same scores
    np.testing.assert_allclose(choice.ChoiceOracle(rt, batch).losses(probes), losses, rtol=1e-6)


def test_full_rank_probe_scores_agree_with_their_losses(tmp_path):
    tiny = build(tmp_path, task="causal-lm", graph="fullrank")
    rt = Runtime(tiny.path)
    batch = make_choice_batch(EXAMPLES, load_tokenizer(tiny.path), tiny.manifest.max_seq_len, 0)
    rt.set_batch(batch.input_ids, batch.attention_mask, batch.labels, batch.loss_mask)
    probes = [FullRankProbe(Key.root(3).child("p", i), 0.1) for i in range(2)]
    scores, losses = rt.probe_scores(probes), rt.losses(probes)
    assert scores.shape == (2, 7)
    # The graph's loss is the scored tokens' mean NLL: the rows' sums over the tokens.
    np.testing.assert_allclose(scores.sum(1) / batch.loss_mask.sum(), losses, rtol=1e-5)
    assert not np.array_equal(scores[0], scores[1])


def test_evaluation_scores_each_example_by_its_best_candidate(lm):
    rt = Runtime(lm.path)
    tokenizer = load_tokenizer(lm.path)
    record = evaluation.evaluate(rt, None, EXAMPLES, tokenizer, lm.manifest, batch_size=2)
    batch = make_choice_batch(EXAMPLES, tokenizer, lm.manifest.max_seq_len, 0)
    feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "loss_mask": batch.loss_mask}
    X = {n: lm.effective(n, w).astype(np.float64) for n, w in lm.weights.items()}
    nll, tokens = lm.reference(feeds, X)[1], batch.loss_mask.sum(1)
    picks = [int(np.argmax(-nll[s:s + k] / tokens[s:s + k])) for s, k in ((0, 2), (2, 3), (5, 2))]
    assert record["eval_acc"] == pytest.approx(np.mean(np.array(picks) == [0, 2, 1]))
    assert record["eval_ce"] == pytest.approx(numpy_ce(nll, tokens, (2, 3, 2), (0, 2, 1)), rel=1e-5)


# ---- finetune end to end ----------------------------------------------------------------

def copa_rows(n: int, seed: int) -> list[dict]:
    """COPA-shaped rows over the fixture's words: the right candidate repeats the premise's word."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        word, other = rng.sample(["good", "bad", "fine", "awful"], 2)
        label = rng.randint(0, 1)
        pair = [f"It was {other}.", f"It was {word}."] if label else [f"It was {word}.", f"It was {other}."]
        rows.append({"premise": f"the movie was {word}.", "choice1": pair[0], "choice2": pair[1],
                     "question": rng.choice(["cause", "effect"]), "label": label})
    return rows


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("copa")
    build(root / "lm", task="causal-lm", max_seq_len=16)
    build(root / "cls", max_seq_len=16)
    write(root / "train.jsonl", copa_rows(60, 0))
    write(root / "dev.jsonl", copa_rows(20, 1))
    return root


def finetune(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_zo.cli", "finetune", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_copa_finetune_runs_and_a_killed_run_resumes_bit_exactly(job, tmp_path):
    common = ["--bundle", job / "lm", "--data", job / "train.jsonl", "--eval-data", job / "dev.jsonl",
              "--template", "copa", "--steps", 12, "--batch-size", 4, "checkpoint_every=4", "eval_every=6",
              "probe_slots=2"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for run in (whole, killed):
        result = finetune(*common, "--out", run)
        assert result.returncode == 0, result.stderr
    evals = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert [e["step"] for e in evals] == [0, 6, 12] and all(0 <= e["eval_acc"] <= 1 for e in evals)
    losses = [json.loads(line)["losses"] for line in (whole / "journal.jsonl").read_text().splitlines()]
    assert len(losses) == 12 and all(0 < x < 5 for step in losses for x in step)  # CE over 2: ~log 2
    # As if killed after step 9 was journaled: the step-12 checkpoint never written, steps
    # 10-11 never run. Resuming loads step 8, replays 8-9 from the journal, runs 10-11.
    for path in (killed / "checkpoints").glob("ckpt-000000012.*"):
        path.unlink()
    journal = killed / "journal.jsonl"
    journal.write_text("".join(journal.read_text().splitlines(keepends=True)[:10]))
    result = finetune("--resume", killed)
    assert result.returncode == 0, result.stderr
    a, b = load_latest(whole / "checkpoints"), load_latest(killed / "checkpoints")
    assert a.step == b.step == 12 and a.arrays.keys() == b.arrays.keys()
    for name in a.arrays:
        assert np.array_equal(a.arrays[name], b.arrays[name]), name
    assert journal.read_text() == (whole / "journal.jsonl").read_text()


@pytest.mark.parametrize("bundle, template, message", [
    ("cls", "copa", "template 'copa' is multiple choice and needs a causal-lm bundle"),
    ("lm", "sst2", "template 'sst2' is for a classification bundle, but the bundle is causal-lm"),
])
def test_a_template_that_does_not_fit_the_bundle_is_one_line(job, tmp_path, bundle, template, message):
    result = finetune("--bundle", job / bundle, "--data", job / "train.jsonl", "--template", template,
                      "--out", tmp_path / "run")
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_memory_plan_sizes_a_copa_step_by_its_candidate_rows(job, monkeypatch):
    from edge_zo.memory import plan
    from edge_zo.runconfig import RunConfig
    seen = []

    def calibrate(job, **options):  # the job the plan would measure, then stop
        seen.append(job)
        raise RuntimeError("measured enough")

    monkeypatch.setattr(plan, "calibrate", calibrate)
    for template, rows, choices in (("copa", 2 * 8, 2), ("", 8, 1)):
        config = RunConfig(bundle=str(job / "lm"), data=str(job / "train.jsonl"), template=template, batch_size=8)
        with pytest.raises(RuntimeError, match="measured enough"):
            plan.plan_run(config, None)
        measured = seen.pop()
        assert (measured.shape.batch, measured.choices) == (rows, choices)


def test_a_copa_job_on_a_bundle_with_a_logit_bias_leaves_it_and_says_so(job, tmp_path):
    """The bias's gradient is the text loss's, not the candidate loss's: a multiple-choice job
    neither trains it nor takes the bias job's one probe direction a step, and says it once."""
    build(tmp_path / "lm", task="causal-lm", logit_bias=True, max_seq_len=16)
    run = tmp_path / "run"
    result = finetune("--bundle", tmp_path / "lm", "--data", job / "train.jsonl", "--template", "copa",
                      "--steps", 2, "--batch-size", 4, "--out", run)
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "logit_bias_lr is unused" in line]
    assert len(said) == 1 and "multiple-choice job" in said[0], result.stderr
    assert "and the logit bias by its exact gradient" not in result.stderr
    arrays = load_latest(run / "checkpoints").arrays
    assert not np.any(arrays["W/logit_bias"]) and "bias/m" not in arrays
    assert json.loads((run / "config.json").read_text())["optimizer_resolved"]["N"] == 4
