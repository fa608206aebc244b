"""The logit bias trained by its exact gradient (edge_zo/logit_bias.py), on a torch-free tiny
bundle built as `export --logit-bias` writes one: the graph's token_probs give the loss's
exact gradient, the optimizers never move the bias, a text job moves it and lowers the loss
more than the same job without it, and a job killed at any step resumes to the same bias,
Adam state and weights, bit for bit, even when a step's recorded gradient is lost."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest

from edge_zo.logit_bias import adam_step, bias_gradient
from edge_zo.probes import LowRankProbe
from edge_zo.rng import Key
from edge_zo.runtime import Runtime
from faults.helpers import assert_same_weights, cli, start, temp_files, wait_for_steps, weights
from runtime.fixtures import build

JOB = ("steps=200", "checkpoint_every=40", "batch_size=8", "eval_every=100")


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("logit_bias")
    tiny = build(root / "bundle", task="causal-lm", logit_bias=True, max_seq_len=16)
    rng = np.random.default_rng(0)
    # text whose word frequencies are far from what the tiny model predicts: room for a bias
    words = ["the", "movie", "was", "good", "very", "good", "plot", "the"]
    rows = [{"text": " ".join(rng.choice(words, size=int(rng.integers(5, 12))))} for _ in range(64)]
    (root / "notes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tiny, root


def job(lm, out, *extra) -> list:
    tiny, root = lm
    return ["finetune", "--bundle", tiny.path, "--data", root / "notes.jsonl", "--eval-data", root / "notes.jsonl",
            "--out", out, *JOB, *extra]


def test_token_probs_give_the_exact_gradient_of_the_loss(lm):
    tiny, _ = lm
    rt = Runtime(tiny.path, threads=1)
    V = tiny.manifest.logit_bias.shape[1]
    bias = (0.5 * np.random.default_rng(1).standard_normal((1, V))).astype(np.float32)
    rt.W["logit_bias"].write(bias)
    batch = tiny.batch(batch_size=3, seq=6)
    rt.set_batch(**batch)
    rt.set_sketch(0, {n: np.zeros((m, tiny.manifest.rank), np.float32) for n, (m, _) in rt.shapes.items()})
    rt.collect_token_probs()
    rt.losses([LowRankProbe(0, {}), LowRankProbe(0, {})])  # two slots at the centre: their mean is it
    g = bias_gradient(*rt.token_probs, batch["input_ids"], batch["loss_mask"])
    X = {m.name: tiny.effective(m.name, tiny.weights[m.name]) for m in tiny.manifest.matrices if not m.exact}
    eps, fd = 1e-5, np.zeros(V)
    for v in range(V):  # central differences of the float64 reference, entry by entry
        step = np.zeros((1, V))
        step[0, v] = eps
        fd[v] = (tiny.reference(batch, X, bias + step)[0] - tiny.reference(batch, X, bias - step)[0]) / (2 * eps)
    assert g.shape == (1, V)
    np.testing.assert_allclose(g[0], fd, atol=2e-6)
    assert np.abs(fd).max() > 1e-2  # not a vacuous match of two zeros


def test_the_optimizers_never_see_the_bias(lm):
    tiny, _ = lm
    rt = Runtime(tiny.path, threads=1)
    assert "logit_bias" not in rt.shapes and len(rt.shapes) == 2
    before = rt.export_weights()
    rt.add_noise(Key.root(0), 0.1)  # every tensor the optimizers train (names=None)
    after = rt.export_weights()
    assert np.array_equal(before["logit_bias"], after["logit_bias"])
    assert all(not np.array_equal(before[n], after[n]) for n in rt.shapes)


def test_adam_steps_by_lr_in_the_gradients_sign_at_first():
    g = np.array([[0.3, -2.0, 0.0]])
    delta, m, v = adam_step(g, np.zeros_like(g), np.zeros_like(g), 1, 0.01, 1e-8)
    np.testing.assert_allclose(delta, [[-0.01, 0.01, 0.0]], atol=1e-9)
    assert np.allclose(m, 0.1 * g) and np.allclose(v, 0.001 * g * g)


def test_a_gradient_far_below_eps_moves_its_bias_in_proportion_not_by_lr():
    """The never-seen token's tiny steady gradient: eps = 5 / V keeps it from a full lr step
    a step (what drove 41K unused SmolLM2 tokens down and held-out NLL up)."""
    g, m, v = np.array([[1e-7, 0.3]]), np.zeros((1, 2)), np.zeros((1, 2))
    for t in range(1, 101):
        delta, m, v = adam_step(g, m, v, t, 0.01, 1e-4)
    assert abs(delta[0, 0]) < 0.01 * 2e-3 and abs(delta[0, 1] + 0.01) < 1e-5


def test_a_text_job_moves_the_bias_and_beats_the_same_job_without_it(lm, tmp_path):
    results = {}
    for lr in ("1e-2", "0"):
        run = tmp_path / f"lr{lr}"
        result = cli(*job(lm, run, f"logit_bias_lr={lr}"))
        assert result.returncode == 0, result.stderr
        said = "and the logit bias by its exact gradient (Adam, lr 0.01)" in result.stderr
        assert said == (lr != "0") and "logit_bias_lr is unused" not in result.stderr
        # a job that trains the bias takes one probe direction a step, named in config.json
        resolved = json.loads((run / "config.json").read_text())["optimizer_resolved"]
        assert resolved["N"] == (1 if lr != "0" else 4)
        results[lr] = (json.loads(result.stdout.splitlines()[-1])["eval_loss"], weights(run))
    (with_bias, arrays), (without, plain) = results["1e-2"], results["0"]
    assert not np.any(plain["W/logit_bias"]) and "bias/m" not in plain
    assert np.abs(arrays["W/logit_bias"]).max() > 0.1 and int(arrays["bias/t"]) == 200
    assert with_bias < without - 0.05, (with_bias, without)
    # the gradients of the steps after the older kept checkpoint (160) only: what a resume can need
    kept = sorted(int(p.stem.split("-")[1]) for p in (tmp_path / "lr1e-2" / "gradients").glob("step-*.npy"))
    assert kept == list(range(160, 200))


@pytest.mark.parametrize("lost", [False, True])
def test_a_killed_job_resumes_to_the_same_bias_bit_for_bit(lm, tmp_path, lost):
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert cli(*job(lm, reference)).returncode == 0
    proc = start(*job(lm, run))
    wait_for_steps(run, 90, proc)
    proc.send_signal(signal.SIGKILL)  # no checkpoint at the kill: the journal after step 80 replays
    proc.wait(timeout=60)
    journaled = (run / "journal.jsonl").read_bytes().count(b"\n")
    assert 90 <= journaled < 200
    if lost:  # a step's gradient gone (or damaged): that step and the ones after are redone
        (run / "gradients" / "step-000000085.npy").write_bytes(b"damaged")
    result = cli("finetune", "--resume", run)
    assert result.returncode == 0, result.stderr
    assert_same_weights(run, reference)  # W (the bias among them), opt/ and bias/ arrays
    assert temp_files(run) == []
    steps = [json.loads(line)["step"] for line in (run / "journal.jsonl").read_text().splitlines()]
    assert steps == list(range(200))


def test_a_text_job_on_a_bundle_without_a_bias_says_logit_bias_lr_is_unused(lm, tmp_path):
    _, root = lm
    plain = build(tmp_path / "plain", task="causal-lm", max_seq_len=16)
    result = cli("finetune", "--bundle", plain.path, "--data", root / "notes.jsonl", "--out", tmp_path / "run",
                 "steps=2", "batch_size=4")
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "logit_bias_lr is unused" in line]
    assert len(said) == 1 and "export with --logit-bias" in said[0], result.stderr
    notice = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"logit_bias"' in line]
    assert notice and notice[0]["kind"] == "notice"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["optimizer_resolved"]["N"] == 4


def test_a_job_that_names_N_keeps_it(lm, tmp_path):
    result = cli(*job(lm, tmp_path / "run", "optimizer.N=2", "steps=2"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["optimizer_resolved"]["N"] == 2
