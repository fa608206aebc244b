"""Each issue-8 benchmark runs once at its `--tiny` size and writes sane JSON (CI keeps them working).

The exports of the tiny model are shared by all four (one work folder per session), so
the whole file is a few exports plus seconds of runs. Timings are not checked: numbers
from a loaded CI machine mean nothing; shapes, keys and ranges are.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.export]
pytest.importorskip("torch")
pytest.importorskip("onnxscript")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-work"), tmp_path_factory.mktemp("bench-results")


def run(script: str, dirs, *extra: str) -> dict:
    work, results = dirs
    cmd = [sys.executable, str(REPO / "benchmarks" / script), "--tiny", "--work", str(work),
           "--results", str(results), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    written = [line.split("wrote ", 1)[1] for line in done.stdout.splitlines() if line.startswith("wrote ")]
    return json.loads(Path(next(w for w in written if w.endswith(".json"))).read_text())


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_step_cost(dirs):
    report = run("step_cost.py", dirs, "--presets", "zo-mopi", "paper-code", "mezo")
    assert set(report["summary"]) == {"zo-mopi", "paper-code", "mezo"}
    assert len(report["load_avg_start"]) == 3 and positive(report["wall_s"])
    passes = {name: row["forward_passes"] for name, row in report["summary"].items()}
    assert passes == {"zo-mopi": 8, "paper-code": 9, "mezo": 2}  # central 2N, N=4; forward N+1, N=8
    for row in report["summary"].values():
        assert positive(row["ratio"]) and positive(row["step_s"]) and positive(row["bare_forward_s"])


def test_torch_zo_mopi(dirs):
    report = run("torch_zo_mopi.py", dirs)
    assert set(report["medians"]) == {"edge-zo", "torch"}
    for key in ("steps_per_s_edge_vs_torch", "peak_rss_edge_vs_torch"):
        assert positive(report["ratios"][key])
    for side in report["medians"].values():
        assert side["peak_rss_mib"] > side["import_rss_mib"] > 0


def test_memory(dirs):
    report = run("memory.py", dirs, "--presets", "zo-mopi")
    assert set(report["medians"]) == {"plain", "plain-edge", "finetune:zo-mopi", "backprop", "backprop-all"}
    ratios = report["ratios"]["zo-mopi"]
    assert positive(ratios["finetune_vs_plain"]) and positive(ratios["finetune_vs_backprop"])
    assert positive(ratios["finetune_vs_plain_edge_options"])
    phases = [p["phase"] for p in report["runs"]["finetune:zo-mopi"][0]["phases"]]
    assert phases[:5] == ["imports", "tokenizer", "data", "runtime (session + W)", "optimizer state"]
    assert phases.count("step") == 2 and phases[-1] == "plot"  # --tiny: 2 steps
    assert isinstance(ratios["meets_goal"], bool)


def test_convergence(dirs):
    work, results = dirs
    report = run("convergence.py", dirs, "--presets", "zo-mopi", "zo-muon", "mezo",
                 "--lr", "zo-mopi=1e-2", "zo-muon=1e-2", "mezo=1e-6", "--evals", "2")
    assert set(report["chosen_eta"]) == {"zo-mopi", "zo-muon", "mezo"}
    for r in report["runs"].values():
        probe = r["linear_probe"]  # the tiny Llama's default head is linear: fitted first
        assert 0 <= r["best_dev_acc"] <= 1 and r["evals"][0]["forward_passes"] == probe["forward_passes"] > 0
        assert r["forward_passes"] <= probe["forward_passes"] + 40 + 10  # the probe, the budget, one step's over
    assert set(report["ratios"]) == {"zo_muon_over_zo_mopi", "zo_muon_over_mezo"}
    assert (results / "convergence-tiny.png").stat().st_size > 1000


def test_quality(dirs, shared_data):
    """One finetune cell and one in-context cell on real SST-2 rows, then the table."""
    work, results = dirs
    cell = run("quality.py", dirs, "--task", "sst2", "--seeds", "0")
    assert cell["method"] == "finetune" and cell["metric"] == "acc" and cell["test_rows"] == 32
    steps = [e["step"] for e in cell["evals"]]
    assert steps[0] == 0 and steps[-1] == cell["steps"] > 1 and cell["evals"][-1]["forward_passes"] <= 96
    assert cell["linear_probe"] and cell["probe_record"]["forward_passes"] == 63  # 1000 rows / 16: in the budget
    for e in cell["evals"]:
        assert 0 <= e["test_acc"] <= 1 and 0 <= e["eval_acc"] <= 1
    best = next(e for e in cell["evals"] if e["step"] == cell["best_dev_step"])
    assert cell["summary"]["best_dev_acc"] == best["test_acc"]  # the snapshot's test score, chosen on dev
    assert cell["summary"]["start_acc"] == cell["evals"][0]["test_acc"]
    icl = run("quality.py", dirs, "--task", "sst2", "--seeds", "0", "--method", "icl", "--shots", "2")
    assert icl["shots"] == 2 and icl["demos"].count("\n\n") == 2 and 0 <= icl["summary"]["icl_acc"] <= 1
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "quality.py"), "--table", "--results", str(results)],
                   check=True, capture_output=True, timeout=120)
    table = (results / "quality.md").read_text().splitlines()
    assert any("| finetune |" in row for row in table) and any("| icl (k=2) |" in row for row in table)


def test_quality_personalization_with_a_logit_bias(dirs, shared_data):
    """The wiki cell on a bundle exported with --logit-bias: the bias, moved by its exact
    gradient, lowers the tiny model's held-out NLL within the tiny budget."""
    cell = run("quality.py", dirs, "--task", "wiki", "--seeds", "0", "--logit-bias")
    assert cell["settings"] == ["--logit-bias"] and cell["metric"] == "loss"
    assert "logit-bias" in cell["config"]["bundle"] and cell["config"]["logit_bias_lr"] > 0
    # the job pins one probe direction a step (2 forwards), and the cell's steps fill its budget with them
    assert cell["forwards_per_step"] == 2 and cell["config"]["optimizer"] == {"N": 1}
    assert cell["summary"]["last_loss"] < cell["summary"]["start_loss"] - 0.01, cell["summary"]


@pytest.mark.parametrize("mode", ["zo-bitfit", "bp-all"])
def test_ceiling(dirs, shared_data, mode):
    """The probe-room reference: a ZO and a backprop mode from the same fitted probe."""
    _, results = dirs
    cmd = [sys.executable, str(REPO / "benchmarks" / "ceiling.py"), "--tiny", "--mode", mode,
           "--results", str(results)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((results / "ceiling" / f"tiny-sst2-{mode}-lr0.001-s4-seed0.json").read_text())
    assert [p["step"] for p in report["curve"]] == [0, 2, 4]
    assert report["curve"][-1]["forwards"] == 4 * (2 if mode.startswith("zo") else 3)
    assert report["gain"] == report["best"]["test"] - report["curve"][0]["test"]
    assert report["best"]["dev"] == max(p["dev"] for p in report["curve"])
    # BitFit trains the vectors and the head only: far fewer than every weight of the encoder
    assert (report["trained_parameters"] < 3000) == (mode == "zo-bitfit")


def test_quantized(dirs, tmp_path):
    """quantized.py on a tiny Llama bundle: ONNX variants with the quantized embedding and
    PyTorch fp32/bf16, alternating in one worker; memory phases per variant."""
    sys.path.insert(0, str(REPO / "tests" / "export"))
    import tiny_models
    from edge_zo.cli import main
    model = tiny_models.build("llama", tmp_path / "model")
    bundle = tmp_path / "bundle"
    assert main(["export", str(model), "--task", "classification", "--label-words", " terrible", " great",
                 "--head", "label-words", "--rank", "2", "--out", str(bundle)]) == 0
    variants = ["fp32", "int8@8+e", "int4@8+e", "torch-fp32", "torch-bf16"]
    out = tmp_path / "quantized.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "quantized.py"), "--bundle", str(bundle),
                           "--work", str(dirs[0]), "--out", str(out), "--batch", "2", "--seq", "8", "--iters", "2",
                           "--rounds", "1", "--variants", ",".join(variants)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report["ratios"]) == variants and "quantized.py" in report["command"]
    for name in variants:
        assert positive(report["ratios"][name]["time_vs_torch_bf16_median_of_rounds"])
        assert report["medians"][name]["max_abs_score_diff"] < 0.5 * report["score_scale"]
        phases = report["memory"][name][0]["phases"]
        assert phases["ran"]["VmRSS"] >= phases["imports"]["VmRSS"] > 0


def test_ceiling_text(dirs, shared_data):
    """The personalization room: backprop on the wiki paragraphs lowers held-out NLL per token."""
    _, results = dirs
    cmd = [sys.executable, str(REPO / "benchmarks" / "ceiling_text.py"), "--tiny", "--lr", "1e-2",
           "--results", str(results)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((results / "ceiling" / "tiny-wiki-bp-all-lr0.01-s4-seed0.json").read_text())
    assert [e["step"] for e in report["evals"]] == [0, 2, 4] and report["evals"][-1]["forward_passes"] == 12
    assert report["complete"] and "wall_s" in report  # written at each evaluation, whole at the end
    best = min(report["evals"], key=lambda e: e["eval_loss"])
    assert report["best_dev_loss"] == best["test_loss"] and report["start_loss"] == report["evals"][0]["test_loss"]
    # a random model learns the text's token statistics in a few steps at this rate
    assert report["best_dev_loss"] < report["start_loss"] and report["change"] < 0
    # both references keep JSON in results/ceiling/: each table reads its own runs only
    for script, name in (("ceiling_text.py", "tiny-wiki-bp-all"), ("ceiling.py", "| cell |")):
        listing = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--table", "--results", str(results)],
                                 capture_output=True, text=True, timeout=120)
        assert listing.returncode == 0 and name in listing.stdout, listing.stderr[-2000:]


@pytest.mark.parametrize("train", ["head", "bias", "head+bias"])
def test_ceiling_text_trains_only_what_a_forward_pays_for(train):
    """--train head / bias / head+bias: one step moves the LM head (an untied copy) and/or a
    new logit bias, each at its own rate, and nothing else: the body, and the input embedding
    the head was tied to, stay as they were."""
    import argparse

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    sys.path.insert(0, str(REPO / "benchmarks"))
    import ceiling_text
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=32, tie_word_embeddings=True))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    groups = ceiling_text.trained_parameters(model, argparse.Namespace(train=train, lr=1e-3, bias_lr=1e-2))
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    ids = torch.randint(0, 64, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    trained = [p for group in groups for p in group["params"]]
    shapes = {"head": [(64, 16)], "bias": [(64,)], "head+bias": [(64, 16), (64,)]}[train]
    assert [tuple(p.shape) for p in trained] == shapes
    tied = before["model.embed_tokens.weight"]  # the head's weights before (tied: listed once)
    for group, p in zip(groups, trained):
        start = tied if p.dim() == 2 else torch.zeros(64)
        # Adam's first step moves each value by its rate: the head's 1e-3, a bias's 1e-2 (or --lr alone)
        rate = 1e-3 if p.dim() == 2 or train == "bias" else 1e-2
        assert group["lr"] == rate and torch.allclose((p - start).abs().max(), torch.tensor(rate), rtol=1e-3)
    for name, p in model.named_parameters():
        if all(p is not q for q in trained):
            assert torch.equal(p, before[name]), name
    assert torch.equal(model.model.embed_tokens.weight, tied)


def test_ceiling_text_low_rank_head_starts_at_the_model_and_trains_only_its_delta():
    """--train lora-head+bias: the head z = h Wᵀ + (h V) Uᵀ + b scores as the tied head did
    until a step; one step moves U by its rate (its gradient is (P - Y)ᵀ h V, nonzero) and b by
    the bias's, leaves V (its gradient has U = 0 in it) and every model weight as they were."""
    import argparse

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    sys.path.insert(0, str(REPO / "benchmarks"))
    import ceiling_text
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=32, tie_word_embeddings=True))
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    groups = ceiling_text.trained_parameters(
        model, argparse.Namespace(train="lora-head+bias", lr=1e-3, bias_lr=1e-2, head_rank=4))
    head = model.lm_head
    assert [tuple(p.shape) for group in groups for p in group["params"]] == [(64, 4), (16, 4), (64,)]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, logits)
    V = head.V.detach().clone()
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert torch.allclose(head.U.abs().max(), torch.tensor(1e-3), rtol=1e-3)
    assert torch.equal(head.V, V)
    assert torch.allclose(head.bias.abs().max(), torch.tensor(1e-2), rtol=1e-3)
    for name, p in model.named_parameters():
        if name in before:
            assert torch.equal(p, before[name]), name
