"""LP-then-ZO: the linear head in the graph, the runtime's dense tensors, the numpy fit, the loop.

One tiny BERT encoder is exported once with `--head linear`; everything else runs on it with
real onnxruntime, real files and the real CLI.
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

from edge_zo import checkpoint, linear_probe  # noqa: E402
from edge_zo.bundle import read_manifest  # noqa: E402
from edge_zo.cli import main  # noqa: E402
from edge_zo.data import Example, load_tokenizer, make_batch  # noqa: E402
from edge_zo.optim.base import LowRankProbe, NoiseProbe  # noqa: E402
from edge_zo.rng import Key, tensor_noise  # noqa: E402
from edge_zo.runtime import Runtime  # noqa: E402
from edge_zo.templates import default_template_name  # noqa: E402

pytestmark = pytest.mark.export

_spec = importlib.util.spec_from_file_location("tiny_models", Path(__file__).parent / "export" / "tiny_models.py")
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

HEAD = "linear_head.weight"
REVIEWS = [("a great movie", "positive"), ("a terrible movie", "negative"),
           ("it was great fun", "positive"), ("it was terrible", "negative"),
           ("the actors are good", "positive"), ("what a waste of time", "negative"),
           ("the plot is thin", "negative"), ("great actors", "positive")]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lp")
    folder = tiny.build("bert", root / "model")
    assert main(["export", str(folder), "--task", "classification", "--label-words", "terrible",
                 "great", "--head", "linear", "--rank", "2", "--out", str(root / "bundle")]) == 0
    (root / "reviews.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n"
                                                for t, y in REVIEWS * 3))
    return root


def bound_runtime(root):
    bundle = root / "bundle"
    manifest = read_manifest(bundle)
    rt = Runtime(bundle)
    batch = make_batch([Example(t, int(y == "positive")) for t, y in REVIEWS], load_tokenizer(bundle),
                       manifest.max_seq_len, manifest.pad_token_id)
    rt.set_batch(batch.input_ids, batch.attention_mask, batch.labels)
    return rt, manifest


def test_manifest_and_graph_treat_the_head_as_dense(root):
    rt, manifest = bound_runtime(root)
    head = {m.name: m for m in manifest.matrices}[HEAD]
    assert head.dense and set(head.inputs) == {"W"} and head.shape == (2, 33)
    assert default_template_name(manifest) == "review-plain"  # an encoder reads the bare text (issue 20)
    assert all(not m.dense and set(m.inputs) == {"W", "A", "D"} for m in manifest.matrices if m.name != HEAD)
    assert rt.shapes[HEAD] == (66,) and HEAD not in rt.A  # the optimizers' 1-D path
    features = rt.features()
    assert features.shape == (len(REVIEWS), 33)
    np.testing.assert_allclose(features[:, -1], 1.0)  # bias column
    np.testing.assert_allclose(np.linalg.norm(features[:, :-1], axis=1), 1.0, rtol=1e-5)
    # scores = features · Hᵀ for any H written into the runtime
    H = np.random.default_rng(0).standard_normal((2, 33)).astype(np.float32)
    rt.load_weights({HEAD: H})
    np.testing.assert_allclose(rt.scores(), features @ H.T, rtol=1e-4, atol=1e-4)


def test_a_lowrank_probe_with_head_noise_equals_the_moved_head_and_restores_it(root):
    rt, _ = bound_runtime(root)
    rt.set_sketch(0, {n: np.zeros((m, 2), np.float32) for n, (m, *_) in rt.shapes.items() if n in rt.A})
    W0 = rt.export_weights()[HEAD]
    key, mu = Key.root(3), 0.5
    probe = LowRankProbe(0, {}, NoiseProbe(key, mu, (HEAD,)))
    (loss,) = rt.losses([probe])
    assert np.array_equal(rt.export_weights()[HEAD], W0)  # bit-exact restore
    rt.load_weights({HEAD: W0 + mu * tensor_noise(key, HEAD, (66,)).reshape(2, 33)})
    (moved,) = rt.losses([LowRankProbe(0, {})])
    assert loss == pytest.approx(moved, rel=1e-6)
    rt.load_weights({HEAD: W0})
    assert abs(rt.losses([LowRankProbe(0, {})])[0] - loss) > 1e-4  # the noise mattered


def test_fit_logistic_reaches_the_penalized_optimum():
    rng = np.random.default_rng(0)
    X = np.c_[rng.standard_normal((200, 5)), np.ones(200)]
    y = (X[:, 0] - 0.5 * X[:, 1] + 0.3 * rng.standard_normal(200) > 0).astype(int)
    H = linear_probe.fit_logistic(X, y, 2, l2=1e-2)
    P = linear_probe.softmax(X @ H.T)
    penalty = np.full(H.shape, 1e-2)
    penalty[:, -1] = 1e-8
    grad = (P - np.eye(2)[y]).T @ X / len(X) + penalty * H
    assert np.abs(grad).max() < 1e-8  # stationary: the convex objective's minimum
    assert np.mean(np.argmax(X @ H.T, axis=1) == y) > 0.85
    l2, cv = linear_probe.choose_l2(X, y, 2, seed=0)
    assert l2 in linear_probe.L2_GRID and cv > 0.8
    assert linear_probe.choose_l2(X, y, 2, seed=0) == (l2, cv)  # a function of data and seed


def finetune(root, run, *extra):
    return main(["finetune", "--bundle", str(root / "bundle"), "--data", str(root / "reviews.jsonl"),
                 "--eval-data", str(root / "reviews.jsonl"), "--out", str(run), "template=review-plain",
                 "steps=4", "batch_size=4", "eval_every=2", "checkpoint_every=2", "optimizer.nu=3",
                 "optimizer.one_d=sgd", "optimizer.one_d_lr=0.05", *extra])


def final_weights(run: Path) -> dict:
    ckpt = checkpoint.load_latest(run / "checkpoints")
    assert ckpt.meta["step"] == 4
    return ckpt.arrays


def test_finetune_fits_the_head_first_then_trains_body_and_head(root):
    run = root / "run"
    assert finetune(root, run) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lp = next(r for r in records if r["kind"] == "linear_probe")
    assert lp["examples"] == 24 and lp["forward_passes"] == 6  # 24 examples, batches of 4
    first_eval = next(r for r in records if r["kind"] == "eval")
    assert first_eval["step"] == 0 and first_eval["eval_acc"] == pytest.approx(lp["train_acc"])
    assert first_eval["forward_passes"] == 6  # the probe's forwards count towards the budget
    manifest = read_manifest(root / "bundle")
    rt = Runtime(root / "bundle")
    start = rt.export_weights()
    final = final_weights(run)
    assert not np.array_equal(final[f"W/{HEAD}"], start[HEAD])
    body = next(m.name for m in manifest.matrices if not m.dense)
    assert not np.array_equal(final[f"W/{body}"], start[body])
    # one_d=frozen keeps the fitted head through the ZO steps
    frozen = root / "frozen"
    assert finetune(root, frozen, "optimizer.one_d=frozen", "linear_probe=on", "checkpoint_every=100") == 0
    fitted = checkpoint.load_latest(frozen / "checkpoints").arrays[f"W/{HEAD}"]
    assert not np.array_equal(fitted, start[HEAD])
    probed = np.load(frozen / "checkpoints" / "ckpt-000000000.npz")[f"W/{HEAD}"]  # right after the probe
    assert np.array_equal(fitted, probed)
    off = root / "off"
    assert finetune(root, off, "optimizer.one_d=frozen", "linear_probe=off") == 0
    assert np.array_equal(final_weights(off)[f"W/{HEAD}"], start[HEAD])


@pytest.mark.parametrize("lost", ["all but the probe's checkpoint", "everything but the config"])
def test_resume_after_a_kill_gives_the_same_weights(root, lost):
    reference = root / "reference"
    if not reference.exists():
        assert finetune(root, reference, "checkpoint_every=100") == 0
    run = root / f"resume-{lost.split()[0]}"
    shutil.rmtree(run, ignore_errors=True)
    assert finetune(root, run, "checkpoint_every=100") == 0
    # checkpoints: step 0 (written right after the probe) and step 4 (the end)
    assert sorted(p.name for p in (run / "checkpoints").glob("*.npz")) == \
        ["ckpt-000000000.npz", "ckpt-000000004.npz"]
    shutil.rmtree(run / "best")
    if lost.startswith("all"):  # killed during step 2: one journal line after the probe
        for path in (run / "checkpoints").glob("ckpt-000000004.*"):
            path.unlink()
        journal = (run / "journal.jsonl").read_text().splitlines()
        (run / "journal.jsonl").write_text(journal[0] + "\n")
    else:  # killed during the probe: nothing but config.json
        for path in run.iterdir():
            if path.name != "config.json":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert main(["finetune", "--resume", str(run)]) == 0
    want, got = final_weights(reference), final_weights(run)
    assert sorted(want) == sorted(got) and all(np.array_equal(want[k], got[k]) for k in want)


def test_a_probe_too_large_for_memory_stops_with_the_fix(root, monkeypatch):
    from edge_zo.errors import UserError
    rt, manifest = bound_runtime(root)
    examples = [Example(t, int(y == "positive")) for t, y in REVIEWS]
    monkeypatch.setattr(linear_probe, "MAX_HESSIAN_MIB", 0.1)  # 2 x 33 features need ~0.03 MiB x 2
    linear_probe.fit_head(rt, examples, load_tokenizer(root / "bundle"), manifest, 4, 0)
    monkeypatch.setattr(linear_probe, "MAX_HESSIAN_MIB", 0.01)
    with pytest.raises(UserError, match="pass linear_probe=off"):
        linear_probe.fit_head(rt, examples, load_tokenizer(root / "bundle"), manifest, 4, 0)


@pytest.mark.parametrize("zero_shot_right", [True, False])
def test_a_fit_no_better_than_the_zero_shot_head_keeps_it(root, monkeypatch, zero_shot_right):
    """The exported head scores zero-shot; the probe replaces it only when its fit's
    cross-validated accuracy beats the zero-shot head's accuracy on the training set."""
    rt, manifest = bound_runtime(root)
    H0 = rt.export_weights()[HEAD].astype(np.float64)
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(40, H0.shape[1] - 1)), np.ones((40, 1))], axis=1)
    y = np.argmax(X @ H0.T, axis=1)  # what the zero-shot head answers
    if not zero_shot_right:
        y = (X[:, 0] > 0).astype(np.int64)  # an easy rule the zero-shot head does not know
    monkeypatch.setattr(linear_probe, "collect_features", lambda *args: (X, y, 10))
    record = linear_probe.fit_head(rt, [], None, manifest, 4, 0)
    assert record["kept"] == ("zero-shot" if zero_shot_right else "fit")
    after = rt.export_weights()[HEAD]
    assert np.array_equal(after, H0.astype(after.dtype)) == zero_shot_right
    assert record["zero_shot_acc"] == (1.0 if zero_shot_right else pytest.approx(np.mean(np.argmax(X @ H0.T, 1) == y)))
    assert ("kept the zero-shot head" in linear_probe.summary(record)) == zero_shot_right
