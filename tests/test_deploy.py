"""`edge-zo deploy` end to end: a real tiny export, a short real fine-tune, real files.

The deployed model is checked against the run's weights *before* the flush (the training
graph with W + A·C), so a wrong fold, a wrong weight layout or a missed pending update
all show up, and against the untrained bundle, so a deploy that ignored training shows up.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")
import onnxruntime as ort  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from edge_zo import checkpoint, deploy, loop, resume, runconfig  # noqa: E402
from edge_zo.bundle import Manifest, read_manifest, write_manifest  # noqa: E402
from edge_zo.cli import main  # noqa: E402
from edge_zo.data import Example, make_batch  # noqa: E402
from edge_zo.runtime import Runtime  # noqa: E402

pytestmark = pytest.mark.export

_spec = importlib.util.spec_from_file_location("tiny_models", Path(__file__).parent / "export" / "tiny_models.py")
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

REVIEWS = [("a great movie", "positive"), ("a terrible movie", "negative"),
           ("it was great fun", "positive"), ("it was terrible", "negative"),
           ("the actors are good", "positive"), ("what a waste of time", "negative"),
           ("the plot is thin", "negative"), ("great actors", "positive")]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A tiny MiniLM-like encoder exported with the linear head (dense, not low-rank),
    linear-probed, then fine-tuned 6 steps with the head trained too."""
    root = tmp_path_factory.mktemp("deploy")
    folder = tiny.build("bert", root / "model")
    assert main(["export", str(folder), "--task", "classification", "--label-words", "terrible",
                 "great", "--head", "linear", "--rank", "2", "--out", str(root / "bundle")]) == 0
    data = write_jsonl(root / "reviews.jsonl", [{"text": t, "label": y} for t, y in REVIEWS * 3])
    assert main(["finetune", "--bundle", str(root / "bundle"), "--data", str(data),
                 "--eval-data", str(data), "--out", str(root / "run"), "template=review-plain",
                 "steps=6", "batch_size=4", "eval_every=3", "checkpoint_every=3",
                 "optimizer.eta=0.5", "optimizer.nu=4",  # nu < steps: a fold happened
                 "optimizer.one_d=sgd", "optimizer.one_d_lr=0.05"]) == 0
    return root


def deploy_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["deploy", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def scores_of(model_path: Path, batch) -> np.ndarray:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(["scores"], {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})[0]


def eval_batch(job):
    bundle = job / "bundle"
    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    manifest = read_manifest(bundle)
    texts = [Example(t, int(y == "positive")) for t, y in REVIEWS]
    return make_batch(texts, tokenizer, manifest.max_seq_len, manifest.pad_token_id)


def training_graph_scores(job, batch, weights: str = "best") -> np.ndarray:
    """The run's snapshot as the training graph sees it: W + A·C, nothing folded."""
    config = runconfig.load(job / "run")
    runtime = Runtime(job / "bundle")
    ckpt = checkpoint.load_latest(job / "run" / ("best" if weights == "best" else "checkpoints"))
    state = resume.load_snapshot(ckpt, runtime, config)
    C = loop.bind_pending(runtime, state)
    assert C is not None and any(np.abs(c).max() > 0 for c in C.values())  # a pending update
    runtime.set_batch(batch.input_ids, batch.attention_mask, batch.labels, batch.loss_mask)
    return runtime.scores(C)


def test_deploy_merges_the_trained_weights(job, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    code, stdout, err = deploy_cli(capsys, job / "run", "--out", out, "--weights", "last")
    assert code == 0, err
    assert "parity with the training graph" in stdout and "last (step 6)" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # one self-contained file
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert not [t.name for t in model.graph.initializer if "::" in t.name]  # no A, no D
    batch = eval_batch(job)
    got = scores_of(out, batch)
    np.testing.assert_allclose(got, training_graph_scores(job, batch, "last"), atol=1e-4, rtol=1e-5)
    untrained = Runtime(job / "bundle")
    untrained.set_batch(batch.input_ids, batch.attention_mask, batch.labels, batch.loss_mask)
    assert np.abs(got - untrained.scores(None)).max() > 1e-3  # training moved the scores


def test_fp16_halves_the_file_and_keeps_the_scores(job, tmp_path, capsys):
    assert deploy_cli(capsys, job / "run", "--out", tmp_path / "fp32.onnx")[0] == 0
    code, _, err = deploy_cli(capsys, job / "run", "--out", tmp_path / "fp16.onnx", "--dtype", "fp16")
    assert code == 0, err
    model = onnx.load(str(tmp_path / "fp16.onnx"))
    big = [t for t in model.graph.initializer if np.prod(t.dims) >= 1024]
    assert big and all(t.data_type == onnx.TensorProto.FLOAT16 for t in big)
    # The weights halve (a tiny model's file is mostly graph, so compare the weights' bytes).
    full, half = (weight_bytes(tmp_path / name) for name in ("fp32.onnx", "fp16.onnx"))
    assert half < 0.55 * full
    batch = eval_batch(job)
    np.testing.assert_allclose(scores_of(tmp_path / "fp16.onnx", batch),
                               scores_of(tmp_path / "fp32.onnx", batch), atol=5e-2)


def weight_bytes(path: Path) -> int:
    return sum(len(t.raw_data) for t in onnx.load(str(path)).graph.initializer
               if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))


def negated(src: Path, dst: Path) -> None:
    """A deployed model whose scores are negated: the worst classifier there is."""
    model = onnx.load(str(src))
    model.graph.node[-1].output[0] = "scores_raw"
    model.graph.node.append(onnx.helper.make_node("Neg", ["scores_raw"], ["scores"]))
    onnx.save(model, str(dst))


def test_only_if_better_keeps_or_replaces(job, tmp_path, capsys):
    data = job / "reviews.jsonl"
    out = tmp_path / "model.onnx"
    assert deploy_cli(capsys, job / "run", "--out", out)[0] == 0
    before = out.read_bytes()
    code, stdout, _ = deploy_cli(capsys, job / "run", "--out", out, "--only-if-better", data)
    assert code == 0 and "kept" in stdout  # equal is not better
    assert out.read_bytes() == before
    new, old = map(float, [stdout.split("new ")[1].split(",")[0], stdout.split("previous ")[1].split(":")[0]])
    assert new == old and new != 0.5  # else the negated model below would tie too
    negated(out, out)
    code, stdout, _ = deploy_cli(capsys, job / "run", "--out", out, "--only-if-better", data)
    replaced = "replaced it" in stdout
    assert code == 0 and replaced == (new > 0.5)
    assert (out.read_bytes() == before) == replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no staging left


def test_a_failed_parity_check_writes_nothing(job, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(deploy.TOLERANCE, "fp32", (-1.0, 0.0))
    code, _, err = deploy_cli(capsys, job / "run", "--out", tmp_path / "model.onnx")
    assert code == 2 and "parity check failed" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_say_the_fix(job, tmp_path, capsys):
    code, _, err = deploy_cli(capsys, tmp_path / "nope", "--out", tmp_path / "m.onnx")
    assert code == 2 and "config.json: missing" in err
    empty = tmp_path / "empty-run"
    empty.mkdir()
    shutil.copy(job / "run" / "config.json", empty / "config.json")
    code, _, err = deploy_cli(capsys, empty, "--out", tmp_path / "m.onnx")
    assert code == 2 and "no complete checkpoint to deploy" in err and "--resume" in err
    code, _, err = deploy_cli(capsys, job / "run", "--out", tmp_path / "missing" / "m.onnx")
    assert code == 2 and "does not exist" in err and "mkdir -p" in err
    assert not (tmp_path / "missing").exists()


def test_a_bundle_without_inference_graph_asks_for_a_re_export(job, tmp_path, capsys):
    old = tmp_path / "old-bundle"
    shutil.copytree(job / "bundle", old)
    manifest = read_manifest(old)
    write_manifest(old, Manifest(**{**manifest.__dict__, "inference_file": ""}))
    run = tmp_path / "run"
    shutil.copytree(job / "run", run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "bundle": str(old)}))
    code, _, err = deploy_cli(capsys, run, "--out", tmp_path / "m.onnx")
    assert code == 2 and "re-export" in err and not (tmp_path / "m.onnx").exists()


# ---- the self-describing folder and predict ---------------------------------------------

PREDICT_IN_A_FRESH_PROCESS = """
import json, sys
import edge_zo
model = edge_zo.load(sys.argv[1])
texts = json.loads(sys.argv[2])
print(json.dumps({"labels": model.predict(texts), "proba": model.predict_proba(texts).tolist(),
                  "heavy": sorted(m for m in ("onnx", "torch") if m in sys.modules)}))
"""


def test_deploy_to_a_folder_describes_itself_and_predicts_as_the_run_scores(job, tmp_path, capsys):
    out = tmp_path / "models" / "reviews"  # parents are created
    code, _, err = deploy_cli(capsys, job / "run", "--out", out, "--weights", "last")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "edge_zo_model.json", "model.onnx", "tokenizer.json"]
    described = json.loads((out / "edge_zo_model.json").read_text())
    manifest = read_manifest(job / "bundle")
    assert described["task"] == "classification" and described["labels"] == ["negative", "positive"]
    assert described["template"]["prompt"] == "{text}" and described["max_seq_len"] == manifest.max_seq_len
    from edge_zo.bundle_hash import fingerprint
    provenance = described["provenance"]
    assert provenance["bundle_fingerprint"] == fingerprint(job / "bundle") and provenance["run"] == "run"
    assert provenance["step"] == checkpoint.load_latest(job / "run" / "checkpoints").step == 6
    assert provenance["dev"]["metric"] == "eval_acc" and "fine-tuned with edge-zo" in (out / "README.md").read_text()

    texts = [t for t, _ in REVIEWS]
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", PREDICT_IN_A_FRESH_PROCESS, str(out), json.dumps(texts)],
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    assert result["heavy"] == []  # onnxruntime, numpy and tokenizers only
    want = training_graph_scores(job, eval_batch(job), "last")  # the run's own scores of its snapshot
    assert result["labels"] == [["negative", "positive"][i] for i in np.argmax(want, axis=1)]
    softmax = np.exp(want - want.max(axis=1, keepdims=True))
    np.testing.assert_allclose(result["proba"], softmax / softmax.sum(axis=1, keepdims=True), atol=1e-4)


def test_a_deployed_folder_is_replaced_only_when_asked(job, tmp_path, capsys):
    out = tmp_path / "model"
    assert deploy_cli(capsys, job / "run", "--out", out)[0] == 0
    before = (out / "model.onnx").read_bytes()
    code, _, err = deploy_cli(capsys, job / "run", "--out", out, "--weights", "last")
    assert code == 2 and "--force" in err and (out / "model.onnx").read_bytes() == before
    assert deploy_cli(capsys, job / "run", "--out", out, "--weights", "last", "--force")[0] == 0
    assert (out / "model.onnx").read_bytes() != before
    assert json.loads((out / "edge_zo_model.json").read_text())["provenance"]["weights"].startswith("last")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging left


def test_a_folder_of_other_files_is_never_a_deploy_target(job, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = deploy_cli(capsys, job / "run", "--out", out, "--force")
    assert code == 2 and "other files" in err and (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_predict_writes_a_label_per_row_and_names_a_bad_line(job, tmp_path, capsys):
    out = tmp_path / "model"
    assert deploy_cli(capsys, job / "run", "--out", out)[0] == 0
    data = write_jsonl(tmp_path / "rows.jsonl", [{"text": t} for t, _ in REVIEWS])
    assert main(["predict", str(out), "--data", str(data), "--out", str(tmp_path / "p.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == len(REVIEWS) and all(r["label"] in ("negative", "positive") for r in rows)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in rows)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"review": "no text field"}])
    assert main(["predict", str(out), "--data", str(bad)]) == 2
    assert "bad.jsonl, line 2" in capsys.readouterr().err


def test_a_folder_swap_cut_short_by_a_kill_is_put_back(job, tmp_path, capsys):
    """A deploy killed between its two renames leaves the previous model folder inside its
    staging folder; the next deploy to that --out puts it back before anything else."""
    from faults.helpers import dead_pid
    out = tmp_path / "model"
    assert deploy_cli(capsys, job / "run", "--out", out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    staging = tmp_path / f".model.partial-{dead_pid()}"
    staging.mkdir()
    out.rename(staging / "previous")  # the first rename done, the process gone
    code, _, err = deploy_cli(capsys, job / "run", "--out", out)
    assert code == 2 and "--force" in err  # the previous model is back, so it is not replaced
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the dead staging folder is gone


def test_the_adapter_round_trips_to_the_trained_weights(job, tmp_path, capsys):
    from edge_zo import adapter, loading

    folder = tmp_path / "with-adapter"
    code, _, err = deploy_cli(capsys, job / "run", "--out", folder, "--adapter", "--weights", "last")
    assert code == 0, err
    spec = json.loads((folder / "edge_zo_model.json").read_text())["adapter"]
    manifest = read_manifest(job / "bundle")
    assert spec["rank"] == manifest.rank == 2 and set(spec["matrices"]) == {m.name for m in manifest.matrices}
    base = loading.read_weights(job / "bundle", manifest)[0]
    layouts = {m.name: m.layout for m in manifest.matrices}
    applied = adapter.apply(base, folder, layouts=layouts)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(folder / "model.onnx")).graph.initializer}
    moved = 0
    for mat in manifest.matrices:
        trained, recorded = inits[mat.inputs["W"]], spec["matrices"][mat.name]["rel_error"]
        delta = np.linalg.norm(trained.astype(np.float64) - base[mat.name])
        if delta == 0:
            continue
        moved += 1
        got = np.linalg.norm(applied[mat.name].astype(np.float64) - trained) / delta
        assert got == pytest.approx(recorded, abs=1e-3)  # the JSON says the adapter's true error
        assert 0 <= recorded < 1  # better than no adapter at all
        if min(mat.shape) <= manifest.rank:  # the 2-label head: rank 2 holds it exactly
            assert recorded < 1e-5
    assert moved >= 2  # training moved the encoder and the head
    assert "adapter.npz" in (folder / "README.md").read_text()


def test_factor_is_the_best_rank_r_cut():
    from edge_zo.adapter import factor

    rng = np.random.default_rng(0)
    exact = rng.normal(size=(6, 3)) @ rng.normal(size=(3, 5))
    B, A, error = factor(exact, 3)
    assert B.shape == (6, 3) and A.shape == (3, 5) and error < 1e-6
    np.testing.assert_allclose(B @ A, exact, atol=1e-5)
    B, A, error = factor(exact, 1)
    assert error == pytest.approx(np.linalg.norm(exact - B @ A) / np.linalg.norm(exact), rel=1e-5)
    assert 0 < error < 1


def test_an_adapter_of_enough_rank_is_exact(job, tmp_path, capsys):
    """The run folded its update at least once (nu < steps): rank r·(folds + 1) holds it all."""
    folder = tmp_path / "full"
    assert deploy_cli(capsys, job / "run", "--out", folder, "--adapter", "--adapter-rank", "12",
                      "--weights", "last")[0] == 0
    spec = json.loads((folder / "edge_zo_model.json").read_text())["adapter"]
    assert spec["rank"] == 12 and max(m["rel_error"] for m in spec["matrices"].values()) < 1e-5
