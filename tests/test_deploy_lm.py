"""`deploy` and `predict` on causal-lm runs (a real tiny GPT-2 export): a multiple-choice
run's `--only-if-better` compares accuracy as finetune scores it, and a text run's deployed
folder predicts the NLL per token its run evaluated."""

from __future__ import annotations

import json
import subprocess
import sys

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
    assert main(["deploy", str(run), "--out", str(tmp_path / "deployed"), "--weights", "last"]) == 0
    out = tmp_path / "nll.jsonl"
    result = subprocess.run([sys.executable, "-m", "edge_zo.cli", "predict", str(tmp_path / "deployed"), "--data",
                             str(data), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(REVIEWS) and all(r["tokens"] > 0 and r["nll_per_token"] > 0 for r in rows)
    total = sum(r["nll_per_token"] * r["tokens"] for r in rows) / sum(r["tokens"] for r in rows)
    assert total == pytest.approx(evals(run)[-1]["eval_loss"], rel=1e-4)
