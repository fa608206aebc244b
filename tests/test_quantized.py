"""`edge-zo export --weights int8|int4` end to end on real tiny exports (issue 19).

The same tiny encoder is exported twice, fp32 and int8, so the quantized forward is compared
with today's graph on the same batch; then a real fine-tune on the int8 bundle is resumed
bit-identically, deployed through its parity check, and full-rank methods are refused. A tiny
Llama with its LM head tied to the token embedding (as SmolLM2's is) is exported for causal-lm
in fp32, int8 and int4: the embedding and the head are quantized too, and an int4 run
fine-tunes and deploys.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

from edge_zo.bundle import read_manifest  # noqa: E402
from edge_zo.checkpoint import load_latest  # noqa: E402
from edge_zo.cli import main  # noqa: E402
from edge_zo.runtime import Runtime  # noqa: E402
from test_deploy import REVIEWS, tiny, write_jsonl  # noqa: E402

pytestmark = pytest.mark.export
# The quantized forward against fp32, at zero update: |Δscore| <= this x max |fp32 score|.
# Measured on tiny BERT: int8 1.5e-4, int4 2.3e-3; the tiny Llama with its 4-bit token embedding
# (random rows, std 0.02, the worst case for 4 bits): 0.13 (MiniLM and SmolLM2: docs/design.md
# "Quantized base weights").
AGREEMENT = {"int8": 0.02, "int4": 0.2}


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """fp32 and int8 bundles of one tiny encoder (linear head: one dense matrix), and data."""
    root = tmp_path_factory.mktemp("quantized")
    folder = tiny.build("bert", root / "model")
    common = [str(folder), "--task", "classification", "--label-words", "terrible", "great",
              "--head", "linear", "--rank", "2"]
    for weights in ("fp32", "int8"):
        assert main(["export", *common, "--out", str(root / weights), "--weights", weights]) == 0
    write_jsonl(root / "reviews.jsonl", [{"text": t, "label": y} for t, y in REVIEWS * 3])
    return root


def finetune(job, out, *extra, check=True) -> subprocess.CompletedProcess:
    args = [*extra] if "--resume" in extra else [
        "--bundle", str(job / "int8"), "--data", str(job / "reviews.jsonl"), "--out", str(out),
        "template=review-plain", "batch_size=4", "checkpoint_every=4", "optimizer.eta=0.5", "optimizer.schedule=constant", *extra]
    result = subprocess.run([sys.executable, "-m", "edge_zo.cli", "finetune", *args],
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def batch() -> dict:
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 90, (4, 12))
    return dict(input_ids=ids, attention_mask=np.ones_like(ids), labels=np.array([0, 1, 0, 1]))


def test_an_int8_bundle_holds_a_frozen_base_and_an_adapter(job):
    manifest = read_manifest(job / "int8")
    assert manifest.weights == "int8" and manifest.adapter_rank == 8  # 4 x --rank
    low = [m for m in manifest.matrices if not m.dense]
    assert low and all(set(m.inputs) == {"A", "D", "U", "V"} and not m.weight_data for m in low)
    assert all("W" in m.inputs and m.weight_data for m in manifest.matrices if m.dense)
    for graph in ("model.onnx", "inference.onnx"):  # the training graph and the one deploy bakes
        model = onnx.load(str(job / "int8" / graph), load_external_data=False).graph
        assert {"DynamicQuantizeMatMul", "GatherBlockQuantized"} <= {n.op_type for n in model.node}
        assert not [t.name for t in model.initializer if t.name.endswith("word_embeddings.weight")]
        assert not model.value_info  # classification: shape notes dropped (faster, smaller; quantize_graph)
    sizes = {w: (job / w / "model.onnx.data").stat().st_size for w in ("fp32", "int8")}
    assert sizes["int8"] < sizes["fp32"]


def test_the_int8_forward_agrees_with_fp32_and_a_fold_is_exact(job):
    rng = np.random.default_rng(1)
    runtimes = {w: Runtime(job / w) for w in ("fp32", "int8")}
    shapes = runtimes["fp32"].shapes
    A = {n: rng.standard_normal((s[0], 2)).astype(np.float32) for n, s in shapes.items() if len(s) == 2}
    C = {n: (0.05 * rng.standard_normal((2, s[1]))).astype(np.float32) for n, s in shapes.items() if len(s) == 2}
    scores = {}
    for weights, rt in runtimes.items():
        rt.set_batch(**batch())
        rt.set_sketch(0, A)
        before, probed = rt.scores(), rt.scores(C)
        rt.fold(C)
        after = rt.scores()
        # folded (fp32: into W; int8: into the adapter U V) = what the probe path computed
        np.testing.assert_allclose(after, probed, rtol=1e-4, atol=1e-5 * np.abs(probed).max())
        scores[weights] = (before, after)
    for fp32, int8 in zip(scores["fp32"], scores["int8"]):
        assert np.abs(int8 - fp32).max() <= AGREEMENT["int8"] * np.abs(fp32).max()
        assert not np.array_equal(int8, fp32)  # the int8 graph is really another graph
    assert runtimes["int8"].adapter_error < 1e-6  # one fold of rank 2 into rank 8: exact


def test_a_finetune_on_int8_resumes_bit_identical_and_deploys(job, tmp_path, capsys):
    folds = "optimizer.nu=3"  # at steps 3 and 6: one before the cut, one after
    finetune(job, tmp_path / "whole", "--steps", "8", folds)
    finetune(job, tmp_path / "cut", "--steps", "4", folds)
    finetune(job, tmp_path / "cut", "--resume", str(tmp_path / "cut"), "--steps", "8")
    whole, cut = (load_latest(tmp_path / r / "checkpoints").arrays for r in ("whole", "cut"))
    assert whole.keys() == cut.keys() and any(k.endswith("::U") for k in whole)
    for name in whole:
        assert np.array_equal(whole[name], cut[name]), name
    assert any(np.abs(v).max() > 0 for k, v in whole.items() if k.endswith("::U"))  # folds reached U
    out = tmp_path / "deployed"
    assert main(["deploy", str(tmp_path / "whole"), "--out", str(out), "--weights", "last", "--adapter"]) == 0
    assert "parity" in capsys.readouterr().out
    deployed = onnx.load(str(out / "model.onnx"))
    assert "DynamicQuantizeMatMul" in {n.op_type for n in deployed.graph.node}
    assert {i.name for i in deployed.graph.input} == {"input_ids", "attention_mask"}
    adapter = json.loads((out / "edge_zo_model.json").read_text())["adapter"]
    assert adapter["rank"] == 8 and max(m["rel_error"] for m in adapter["matrices"].values()) < 1e-5


@pytest.mark.parametrize("preset", ["mezo", "loren"])
def test_full_rank_methods_are_refused_on_a_quantized_base(job, tmp_path, preset):
    result = finetune(job, tmp_path / "run", "--steps", "2", "--optimizer", preset, check=False)
    assert result.returncode == 2
    assert "frozen int8 base" in result.stderr and "--weights" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_int4_on_a_llama_and_the_refusals_of_export(job, tmp_path, capsys):
    folder = tiny.build("llama", tmp_path / "model")
    common = [str(folder), "--task", "classification", "--label-words", " terrible", " great",
              "--head", "label-words", "--rank", "2"]
    assert main(["export", *common, "--out", str(tmp_path / "int4"), "--weights", "int4"]) == 0
    assert main(["export", *common, "--out", str(tmp_path / "fp32")]) == 0
    scores = {}
    for weights in ("fp32", "int4"):
        rt = Runtime(tmp_path / weights)
        rt.set_batch(**batch())
        scores[weights] = rt.scores()
    assert np.abs(scores["int4"] - scores["fp32"]).max() <= AGREEMENT["int4"] * np.abs(scores["fp32"]).max()
    capsys.readouterr()
    assert main(["export", *common, "--out", str(tmp_path / "x"), "--weights", "int8", "--graph", "fullrank"]) == 2
    assert "--graph lowrank" in capsys.readouterr().err
    assert main(["export", *common, "--out", str(tmp_path / "y"), "--weights", "int8", "--adapter-rank", "1"]) == 2
    assert "at least --rank" in capsys.readouterr().err


def test_plan_counts_the_frozen_base_at_the_size_the_graph_holds(job):
    from edge_zo.memory.model import MiB, quantized_nbytes
    manifest = read_manifest(job / "int8")
    graph = onnx.load(str(job / "int8" / "model.onnx"))
    held = sum(onnx.numpy_helper.to_array(t).nbytes for t in graph.graph.initializer if "::q" in t.name)
    assert sum(quantized_nbytes(m, "int8") for m in manifest.matrices) == held
    parts = subprocess.run([sys.executable, "-m", "edge_zo.cli", "plan", "--bundle", str(job / "int8"),
                            "--profile", "x86-laptop-16gb", "--batch", "4", "--seq-len", "16", "--json"],
                           capture_output=True, text=True, timeout=300)
    assert parts.returncode == 0, parts.stderr
    components = json.loads(parts.stdout)["components_mib"]
    assert components["model: int8 base W (frozen)"] == pytest.approx(held / MiB)
    assert "model: trained weights W" not in components



@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tiny Llama with a tied LM head, exported for causal-lm as fp32, int8 and int4, and its text."""
    root = tmp_path_factory.mktemp("quantized_lm")
    model = tiny.build("llama", root / "model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    for weights in ("fp32", "int8", "int4"):
        assert main(["export", str(model), "--task", "causal-lm", "--rank", "2", "--out", str(root / weights),
                     "--weights", weights]) == 0
    write_jsonl(root / "notes.jsonl", [{"text": t} for t, _ in REVIEWS])
    return root


@pytest.mark.parametrize("weights,head", [("int8", "DynamicQuantizeMatMul"), ("int4", "MatMulNBits")])
def test_a_causal_lm_quantizes_its_embedding_and_tied_head(lm, weights, head):
    from edge_zo_export.quantize_embed import token_tables
    graph = onnx.load(str(lm / weights / "model.onnx"), load_external_data=False).graph
    fp32 = onnx.load(str(lm / "fp32" / "model.onnx"), load_external_data=False).graph
    (table,) = [t for t in fp32.initializer if t.name in token_tables(fp32)]
    shapes = {tuple(table.dims), tuple(table.dims)[::-1]}  # the head may be a folded [H, V] copy
    assert [t.name for t in fp32.initializer if tuple(t.dims) in shapes and t.data_type == 1]  # it is there in fp32
    assert not [t.name for t in graph.initializer if tuple(t.dims) in shapes and t.data_type == 1]  # and gone
    assert f"{table.name}::gbq" in {t.name for t in graph.initializer}
    heads = [n for n in graph.node if n.op_type == head and n.input[1].endswith("::head")]
    assert len(heads) == 1 and "GatherBlockQuantized" in {n.op_type for n in graph.node}
    assert 0 < len(graph.value_info) < len(fp32.value_info)  # causal-lm keeps all but the stale rank-r notes
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 90, (4, 12))
    nll = {}
    for w in ("fp32", weights):
        rt = Runtime(lm / w)
        rt.set_batch(ids, np.ones_like(ids), loss_mask=np.ones_like(ids))
        nll[w] = rt.scores()  # per-row summed NLL of the random tokens
    assert np.abs(nll[weights] - nll["fp32"]).max() <= AGREEMENT[weights] * np.abs(nll["fp32"]).max()
    assert not np.array_equal(nll[weights], nll["fp32"])


def test_an_int4_causal_lm_run_deploys_through_its_parity_check(lm, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["finetune", "--bundle", str(lm / "int4"), "--data", str(lm / "notes.jsonl"), "--out", str(run),
                 "steps=4", "batch_size=4", "optimizer.nu=2", "optimizer.eta=0.5"]) == 0
    state = load_latest(run / "checkpoints").arrays
    assert any(np.abs(v).max() > 0 for k, v in state.items() if k.endswith("::U"))  # a fold reached the adapter
    out = tmp_path / "deployed"
    assert main(["deploy", str(run), "--out", str(out), "--weights", "last"]) == 0
    assert "parity" in capsys.readouterr().out
    deployed = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    assert {"GatherBlockQuantized", "MatMulNBits"} <= {n.op_type for n in deployed.node}
