"""`deploy` and `predict` on causal-lm runs (a real tiny GPT-2 export): a multiple-choice
run's `--only-if-better` compares accuracy as finetune scores it, and a text run's deployed
folder predicts the NLL per token its run evaluated."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("onnx")

from edge_zo.cli import main  # noqa: E402
from test_choice import copa_rows  # noqa: E402
from test_deploy import REVIEWS, tiny, write_jsonl  # noqa: E402

pytestmark = pytest.mark.export


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy_lm")
    model = tiny.build("gpt2", root / "model")
    assert main(["export", str(model), "--task", "causal-lm", "--rank", "2", "--out", str(root / "bundle")]) == 0
    return root


def evals(run) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == "eval"]


def test_only_if_better_on_a_multiple_choice_run_compares_accuracy(lm, tmp_path, capsys):
    train, dev = write_jsonl(tmp_path / "train.jsonl", copa_rows(24, 0)), write_jsonl(tmp_path / "dev.jsonl",
                                                                                   copa_rows(16, 1))
    run = tmp_path / "run"
    assert main(["finetune", "--bundle", str(lm / "bundle"), "--data", str(train), "--eval-data", str(dev),
                 "--template", "copa", "--out", str(run), "steps=4", "batch_size=4", "eval_every=4",
                 "optimizer.eta=0.5"]) == 0
    out = tmp_path / "deployed"
    assert main(["deploy", str(run), "--out", str(out), "--weights", "last"]) == 0
    capsys.readouterr()
    assert main(["deploy", str(run), "--out", str(out), "--weights", "last", "--only-if-better", str(dev)]) == 0
    stdout = capsys.readouterr().out
    assert "accuracy new" in stdout and "kept" in stdout  # the same weights: equal is not better
    new = float(stdout.split("new ")[1].split(",")[0])
    assert new == pytest.approx(evals(run)[-1]["eval_acc"])  # what finetune reported for these weights
    described = json.loads((out / "edge_zo_model.json").read_text())
    assert described["task"] == "multiple-choice"


def test_a_causal_lm_folder_predicts_the_nll_its_run_evaluated(lm, tmp_path):
    data = write_jsonl(tmp_path / "notes.jsonl", [{"text": t} for t, _ in REVIEWS])
    run = tmp_path / "run"
    assert main(["finetune", "--bundle", str(lm / "bundle"), "--data", str(data), "--eval-data", str(data),
                 "--out", str(run), "steps=2", "batch_size=4", "eval_every=2"]) == 0
    assert deployed_nll(run, data, tmp_path) == pytest.approx(evals(run)[-1]["eval_loss"], rel=1e-4)


def deployed_nll(run, data, tmp_path) -> float:
    """`deploy RUN` (its last weights), then `predict` on `data`: the NLL per token over all rows."""
    assert main(["deploy", str(run), "--out", str(tmp_path / "deployed"), "--weights", "last"]) == 0
    out = tmp_path / "nll.jsonl"
    result = subprocess.run([sys.executable, "-m", "edge_zo.cli", "predict", str(tmp_path / "deployed"), "--data",
                             str(data), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(REVIEWS) and all(r["tokens"] > 0 and r["nll_per_token"] > 0 for r in rows)
    return sum(r["nll_per_token"] * r["tokens"] for r in rows) / sum(r["tokens"] for r in rows)


@pytest.fixture(scope="module")
def biased(tmp_path_factory):
    """A tiny Llama (its LM head tied to the embedding, as SmolLM2's) exported with --logit-bias."""
    root = tmp_path_factory.mktemp("deploy_bias")
    model = tiny.build("llama", root / "model")
    assert main(["export", str(model), "--task", "causal-lm", "--rank", "2", "--logit-bias",
                 "--out", str(root / "bundle")]) == 0
    return root


def test_a_trained_logit_bias_is_deployed_and_predicts_the_nll_its_run_evaluated(biased, tmp_path):
    from edge_zo.bundle import read_manifest
    from edge_zo.checkpoint import load_latest
    manifest = read_manifest(biased / "bundle")
    assert manifest.logit_bias.name == "logit_bias" and manifest.logit_bias.shape == (1, 1000)
    assert "logit_bias" not in manifest.trained_shapes()
    data = write_jsonl(tmp_path / "notes.jsonl", [{"text": t} for t, _ in REVIEWS])
    run = tmp_path / "run"
    assert main(["finetune", "--bundle", str(biased / "bundle"), "--data", str(data), "--eval-data", str(data),
                 "--out", str(run), "steps=6", "batch_size=4", "eval_every=6", "logit_bias_lr=0.1"]) == 0
    bias = load_latest(run / "checkpoints").arrays["W/logit_bias"]
    assert np.abs(bias).max() > 0.1  # moved: the deployed graph is not the exported one
    assert deployed_nll(run, data, tmp_path) == pytest.approx(evals(run)[-1]["eval_loss"], rel=1e-4)


@pytest.mark.parametrize("options, said", [
    (["--task", "classification", "--label-words", " terrible", " great"], "needs --task causal-lm"),
    (["--task", "causal-lm", "--weights", "int8"], "--weights fp32"),
])
def test_logit_bias_where_it_cannot_go_is_one_line(lm, tmp_path, capsys, options, said):
    from edge_zo.errors import EXIT_BAD_INPUT
    assert main(["export", str(lm / "model"), "--logit-bias", *options, "--out", str(tmp_path / "b")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert said in err and "--logit-bias" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_the_exported_token_probs_give_the_gradient_pytorch_computes(biased):
    import torch
    from transformers import AutoModelForCausalLM

    from edge_zo.logit_bias import bias_gradient
    from edge_zo.probes import LowRankProbe
    from edge_zo.runtime import Runtime
    model = AutoModelForCausalLM.from_pretrained(biased / "model").eval()
    ids = torch.randint(3, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    loss_mask = torch.ones(2, 9)
    loss_mask[:, :3] = 0
    b = torch.zeros(1000, requires_grad=True)
    logits = model(input_ids=ids).logits[:, :-1].float() + b
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, 1000), ids[:, 1:].reshape(-1), reduction="none")
    (nll * loss_mask[:, 1:].reshape(-1)).sum().div(loss_mask[:, 1:].sum()).backward()
    rt = Runtime(biased / "bundle", threads=1)
    rt.set_batch(ids.numpy(), np.ones((2, 9), np.int64), loss_mask=loss_mask.numpy())
    rt.set_sketch(0, {n: np.zeros((m, rt.manifest.rank), np.float32) for n, (m, _) in rt.shapes.items()})
    rt.collect_token_probs()
    rt.losses([LowRankProbe(0, {})])
    g = bias_gradient(*rt.token_probs, ids.numpy(), loss_mask.numpy())
    np.testing.assert_allclose(g[0], b.grad.numpy(), atol=1e-6)
    assert np.abs(b.grad.numpy()).max() > 1e-2
