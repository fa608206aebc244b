"""Low-rank probes, probe slots, bytes per query, fold exactness, scores and weights."""

from __future__ import annotations

import numpy as np
import pytest

from edge_zo import evaluation, fold
from edge_zo.data import Batch
from edge_zo.runtime import Runtime

from . import fixtures
from .conftest import LowRankProbe, random_probes, random_sketch


def effective(tiny, W: dict, A: dict, D: dict) -> dict:
    return {n: tiny.effective(n, W[n]).astype(np.float64) + A[n].astype(np.float64) @ D[n] for n in W}


@pytest.mark.parametrize("which", ["tiny_cls", "tiny_lm"])
def test_probe_losses_match_an_independent_numpy_forward(which, request):
    tiny = request.getfixturevalue(which)
    rt = Runtime(tiny.path)
    batch = tiny.batch()
    rt.set_batch(**batch)
    A = random_sketch(rt.shapes, tiny.manifest.rank, seed=1)
    rt.set_sketch(0, A)
    probes = random_probes(rt.shapes, tiny.manifest.rank, count=6, seed=2)
    losses = rt.losses(probes)
    expected = [tiny.reference(batch, effective(tiny, tiny.weights, A, p.D))[0] for p in probes]
    assert losses.dtype == np.float32 and losses.shape == (6,)
    np.testing.assert_allclose(losses, expected, rtol=2e-5)
    assert len(set(losses.tolist())) == 6  # the probes really differ


@pytest.mark.parametrize("slots", [1, 2, 3, 4])
def test_probe_slots_give_the_same_losses_as_one_slot(tiny_lm, slots):
    rt = Runtime(tiny_lm.path, probe_slots=1)
    rt.set_batch(**tiny_lm.batch())
    rt.set_sketch(7, random_sketch(rt.shapes, tiny_lm.manifest.rank, seed=3))
    probes = random_probes(rt.shapes, tiny_lm.manifest.rank, count=7, seed=4, sketch_id=7)
    one = rt.losses(probes)
    rt.set_probe_slots(slots)
    np.testing.assert_allclose(rt.losses(probes), one, rtol=1e-6)


def test_a_graph_with_a_fixed_probe_axis_pads_the_last_call(tmp_path):
    tiny = fixtures.build(tmp_path, static_slots=True, probe_slots=3)
    rt = Runtime(tiny.path)
    assert rt.fixed_slots == 3
    batch = tiny.batch()
    rt.set_batch(**batch)
    A = random_sketch(rt.shapes, tiny.manifest.rank, seed=5)
    rt.set_sketch(0, A)
    probes = random_probes(rt.shapes, tiny.manifest.rank, count=4, seed=6)
    expected = [tiny.reference(batch, effective(tiny, tiny.weights, A, p.D))[0] for p in probes]
    np.testing.assert_allclose(rt.losses(probes), expected, rtol=2e-5)


def _bytes_per_probe(tmp_path, out_dim: int) -> tuple[int, int]:
    tiny = fixtures.build(tmp_path / str(out_dim), out_dim=out_dim)
    rt = Runtime(tiny.path, probe_slots=1)
    rt.set_batch(**tiny.batch())
    rt.set_sketch(0, random_sketch(rt.shapes, tiny.manifest.rank, seed=0))
    before_w = {n: rt.W[n].read().copy() for n in rt.W}
    start = rt.bytes_written[0]
    rt.losses(random_probes(rt.shapes, tiny.manifest.rank, count=5, seed=1))
    for name, w in before_w.items():  # W itself is never written by a probe
        assert np.array_equal(rt.W[name].read(), w)
    mn = sum(m * n for m, n in rt.shapes.values())
    return (rt.bytes_written[0] - start) // 5, mn


def test_bytes_written_per_probe_do_not_grow_with_m_times_n(tmp_path):
    small, mn_small = _bytes_per_probe(tmp_path, out_dim=10)
    large, mn_large = _bytes_per_probe(tmp_path, out_dim=640)
    assert mn_large > 10 * mn_small
    assert small == large == 4 * 4 * (12 + 16)  # fp32 x r x (n of fc1 + n of fc2): D only
    assert large < 4 * mn_large / 10


def test_the_bound_w_is_the_runtimes_array_without_a_copy(tiny_cls):
    rt = Runtime(tiny_cls.path)
    for buf in rt.W.values():
        assert buf.value.data_ptr() == buf.host.ctypes.data


@pytest.mark.parametrize("chunk", [1 << 20, 7])  # 7 elements: many row blocks per matrix
def test_fold_equals_w0_plus_the_sum_of_a_c_over_k_windows(tiny_cls, chunk, monkeypatch):
    monkeypatch.setattr(fold.Folder, "CHUNK", chunk)
    rt = Runtime(tiny_cls.path)
    batch = tiny_cls.batch()
    rt.set_batch(**batch)
    r, rng = tiny_cls.manifest.rank, np.random.default_rng(9)
    total = {n: tiny_cls.effective(n, tiny_cls.weights[n]).astype(np.float64) for n in rt.shapes}
    for window in range(4):
        A = random_sketch(rt.shapes, r, seed=10 + window)
        C = {n: (0.05 * rng.standard_normal((r, k))).astype(np.float32) for n, (_, k) in rt.shapes.items()}
        rt.set_sketch(window, A)
        before_fold = rt.losses([LowRankProbe(window, C)])[0]
        rt.fold(C)
        after_fold = rt.losses([LowRankProbe(window, None)])[0]  # D = 0
        assert after_fold == pytest.approx(before_fold, rel=1e-5)
        for n in total:
            total[n] += A[n].astype(np.float64) @ C[n].astype(np.float64)
    weights = rt.export_weights()
    for n, w in weights.items():
        got = tiny_cls.effective(n, w)
        scale = np.abs(total[n]).max()
        np.testing.assert_allclose(got, total[n], rtol=0, atol=16 * np.finfo(np.float32).eps * scale)
    assert rt.losses([LowRankProbe(3, None)])[0] == pytest.approx(tiny_cls.reference(batch, total)[0], rel=1e-5)


def test_scores_export_and_load_weights(tiny_cls, tmp_path):
    rt = Runtime(tiny_cls.path)
    batch = tiny_cls.batch()
    rt.set_batch(**batch)
    A = random_sketch(rt.shapes, tiny_cls.manifest.rank, seed=1)
    rt.set_sketch(0, A)
    C = random_probes(rt.shapes, tiny_cls.manifest.rank, 1, seed=2)[0].D
    np.testing.assert_allclose(rt.scores(C), tiny_cls.reference(batch, effective(tiny_cls, tiny_cls.weights, A, C))[1],
                               rtol=1e-4, atol=1e-5)
    base_scores = rt.scores()
    views = rt.export_weights(copy=False)
    assert all(not v.flags.writeable for v in views.values())
    saved = rt.export_weights()
    rt.fold(C)
    assert not np.allclose(rt.scores(), base_scores)
    rt.load_weights(saved)
    np.testing.assert_array_equal(rt.scores(), base_scores)


def test_classification_evaluation_reports_the_graphs_own_loss_as_eval_ce(tiny_cls):
    """eval_ce is the row-weighted mean over batches of the loss the graph trains on."""
    rt = Runtime(tiny_cls.path)
    parts = [tiny_cls.batch(batch_size=n, seed=s) for n, s in ((3, 0), (5, 1))]
    batches = [Batch(p["input_ids"], p["attention_mask"], p["labels"], np.zeros(p["input_ids"].shape, np.float32))
               for p in parts]
    record = evaluation.score(batches, evaluation.runtime_scores(rt, None), "classification")
    X = {n: tiny_cls.effective(n, w).astype(np.float64) for n, w in tiny_cls.weights.items()}
    (loss0, scores0), (loss1, scores1) = [tiny_cls.reference(p, X) for p in parts]  # each batch's mean NLL
    assert record["eval_ce"] == pytest.approx((3 * loss0 + 5 * loss1) / 8, rel=1e-5)
    right = sum(int(np.sum(np.argmax(scores, 1) == p["labels"])) for scores, p in zip((scores0, scores1), parts))
    assert record["eval_acc"] == right / 8


def test_a_probe_for_another_sketch_is_refused(tiny_cls):
    rt = Runtime(tiny_cls.path)
    rt.set_batch(**tiny_cls.batch())
    rt.set_sketch(1, random_sketch(rt.shapes, tiny_cls.manifest.rank, seed=1))
    with pytest.raises(ValueError, match="sketch"):
        rt.losses(random_probes(rt.shapes, tiny_cls.manifest.rank, 1, seed=2, sketch_id=2))
