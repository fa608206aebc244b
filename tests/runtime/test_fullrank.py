"""Full-rank probes (MeZO): in-place perturbation restored bit for bit, and add_noise."""

from __future__ import annotations

import numpy as np
import pytest

from edge_zo import noise, rng
from edge_zo.providers import Buffer
from edge_zo.rng import Key, tensor_noise
from edge_zo.runtime import Runtime

from . import fixtures
from .conftest import FullRankProbe


def _adversarial(dtype) -> np.ndarray:
    """Zeros of both signs, subnormals, values at and around binade edges, extremes."""
    info = np.finfo(dtype)
    edges = np.array([1.0, 2.0, 0.5, 2.0 ** -10, 1024.0], dtype)
    near = np.concatenate([np.nextafter(edges, np.inf), np.nextafter(edges, -np.inf), edges])
    special = np.array([0.0, -0.0, info.smallest_subnormal, -info.smallest_subnormal,
                        info.tiny, info.max, -info.max], dtype)
    rng = np.random.default_rng(0)
    gauss = (0.02 * rng.standard_normal(20000)).astype(dtype)
    values = np.concatenate([near, -near, special, gauss])
    return values


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e-30])
def test_perturb_then_restore_is_bit_exact_on_adversarial_values(dtype, scale):
    w = _adversarial(dtype)
    rng = np.random.default_rng(1)
    d = (scale * rng.standard_normal(w.size)).astype(dtype)
    d[:50] = np.where(np.arange(50) % 2, w[:50], -w[:50])  # cancellation to exact zero, and doubling
    with np.errstate(over="ignore", invalid="ignore"):
        w1, record = noise.exact_perturb(w.copy(), d)
        back = noise.exact_restore(w1, d, record)
    assert np.array_equal(back.view(np.uint8), w.view(np.uint8))  # bits, so -0.0 != 0.0


def test_naive_restore_is_not_exact_but_the_record_is_small():
    rng = np.random.default_rng(2)
    w = (0.02 * rng.standard_normal(1_000_000)).astype(np.float32)
    d = (1e-3 * rng.standard_normal(w.size)).astype(np.float32)
    w1, record = noise.exact_perturb(w, d)
    assert not np.array_equal(w1 - d, w)  # the problem the record solves
    assert np.array_equal(noise.exact_restore(w1, d, record), w)
    verbatim = record[1].size / w.size
    assert verbatim < 1e-3, verbatim
    assert noise.record_nbytes(record) < 0.26 * w.nbytes  # int8 per element + the verbatim few


def _fullrank(tmp_path):
    return fixtures.build(tmp_path, graph="fullrank")


def test_fullrank_probes_see_the_perturbation_and_restore_w_exactly(tmp_path):
    tiny = _fullrank(tmp_path)
    rt = Runtime(tiny.path)
    batch = tiny.batch()
    rt.set_batch(**batch)
    w0 = rt.export_weights()
    probes = [FullRankProbe(Key.root(0).child("probe", i), scale, names)
              for i, (scale, names) in enumerate([(1e-3, None), (-1e-3, None), (0.5, ("layers.0.fc1.weight",))])]
    losses = rt.losses(probes)
    for probe, loss in zip(probes, losses):
        names = probe.names or tuple(rt.shapes)
        X = {n: tiny.effective(n, w0[n]).astype(np.float64) for n in rt.shapes}
        for n in names:
            X[n] = X[n] + probe.scale * tensor_noise(probe.key, n, rt.shapes[n]).astype(np.float64)
        assert loss == pytest.approx(tiny.reference(batch, X)[0], rel=1e-5)
    for n, w in rt.export_weights().items():
        assert np.array_equal(w.view(np.uint32), w0[n].view(np.uint32)), n
    assert losses[0] != losses[1]


def test_add_noise_is_the_mezo_update(tmp_path):
    tiny = _fullrank(tmp_path)
    rt = Runtime(tiny.path)
    w0 = rt.export_weights()
    key = Key.root(3).child("step", 1)
    rt.add_noise(key, -0.01, names=["layers.0.fc2.weight"])
    w1 = rt.export_weights()
    assert np.array_equal(w1["layers.0.fc1.weight"], w0["layers.0.fc1.weight"])
    z = tensor_noise(key, "layers.0.fc2.weight", rt.shapes["layers.0.fc2.weight"])
    expected = w0["layers.0.fc2.weight"] + np.float32(-0.01) * z.T  # stored in,out
    np.testing.assert_array_equal(w1["layers.0.fc2.weight"], expected)


def test_fullrank_probes_on_a_lowrank_graph_use_d_zero(tiny_cls):
    rt = Runtime(tiny_cls.path)
    batch = tiny_cls.batch()
    rt.set_batch(**batch)
    probe = FullRankProbe(Key.root(1), 1e-2)
    X = {n: tiny_cls.effective(n, tiny_cls.weights[n]).astype(np.float64)
         + 1e-2 * tensor_noise(probe.key, n, rt.shapes[n]) for n in rt.shapes}
    assert rt.losses([probe])[0] == pytest.approx(tiny_cls.reference(batch, X)[0], rel=1e-5)


def test_loren_offsets_shift_every_row_and_restore_exactly(tmp_path):
    # LOREN's anisotropic probe: θ + scale (z + offset), offset an n-vector per tensor.
    tiny = _fullrank(tmp_path)
    rt = Runtime(tiny.path)
    batch = tiny.batch()
    rt.set_batch(**batch)
    w0 = rt.export_weights()
    name = "layers.0.fc2.weight"  # stored in,out: the offset must follow the layout
    offset = {name: np.linspace(-1, 1, rt.shapes[name][1]).astype(np.float32)}
    probe = FullRankProbe(Key.root(5), 1e-2, (name,), offset)
    X = {n: tiny.effective(n, w0[n]).astype(np.float64) for n in rt.shapes}
    X[name] = X[name] + 1e-2 * (tensor_noise(probe.key, name, rt.shapes[name]) + offset[name])
    assert rt.losses([probe])[0] == pytest.approx(tiny.reference(batch, X)[0], rel=1e-5)
    for n, w in rt.export_weights().items():
        assert np.array_equal(w.view(np.uint32), w0[n].view(np.uint32)), n
    with pytest.raises(ValueError, match="offsets for"):
        rt.losses([FullRankProbe(Key.root(5), 1e-2, ("layers.0.fc1.weight",), offset)])


def test_add_applies_full_and_row_deltas_in_the_stored_layout(tmp_path):
    tiny = _fullrank(tmp_path)
    rt = Runtime(tiny.path)
    w0 = rt.export_weights()
    fc1, fc2 = "layers.0.fc1.weight", "layers.0.fc2.weight"
    full = np.arange(np.prod(rt.shapes[fc1]), dtype=np.float32).reshape(rt.shapes[fc1])
    row = np.arange(rt.shapes[fc2][1], dtype=np.float32)
    rt.add({fc1: full, fc2: row})
    w1 = rt.export_weights()
    np.testing.assert_array_equal(w1[fc1], w0[fc1] + full)  # out,in: stored as is
    np.testing.assert_array_equal(w1[fc2], w0[fc2] + row[:, None])  # in,out: transposed
    with pytest.raises(ValueError, match=r"delta\[layers.0.fc1.weight\] has shape"):
        rt.add({fc1: row})


# ---- the block path (edge_zo/noise.py): several rng.BLOCKs, both layouts, fp16 ----------

def _target(w: np.ndarray, shape, layout: str, zero_copy: bool = True) -> noise.Target:
    matrix = w.shape if layout == "out_in" else w.shape[::-1]
    return noise.Target(Buffer(w, zero_copy=zero_copy), tuple(shape), tuple(matrix), layout)


def _reference_d(key, shape, matrix, layout, scale, offset, dtype) -> np.ndarray:
    """d = scale (z + offset) in the stored layout, as whole-tensor numpy would build it."""
    z = tensor_noise(key, "W", shape)
    if offset is not None:
        z = z + offset
    d = (z * np.float32(scale)).reshape(matrix)
    return (d if layout == "out_in" else d.T).astype(dtype)


@pytest.mark.parametrize("layout,dtype,zero_copy", [("out_in", np.float32, True), ("in_out", np.float32, True),
                                                    ("out_in", np.float16, True), ("out_in", np.float32, False)])
def test_block_perturb_is_w_plus_d_and_restores_bit_exactly(layout, dtype, zero_copy):
    m, n = 5, rng.BLOCK // 2 + 3  # 2.5 blocks: rows cut by block boundaries
    w0 = (0.02 * np.random.default_rng(0).standard_normal((m, n) if layout == "out_in" else (n, m))).astype(dtype)
    w0.reshape(-1)[:4] = [0.0, -0.0, 1e-30, -1e-30]  # elements the record keeps verbatim
    t = _target(w0.copy(), (m, n), layout, zero_copy)
    key, offset = Key.root(7), np.linspace(-1, 1, n).astype(np.float32)
    stream = rng.noise_stream(key, "W")
    (record,) = noise.perturb([t], [stream], 1e-3, [offset])
    d = _reference_d(key, (m, n), (m, n), layout, 1e-3, offset, dtype)
    assert np.array_equal(t.buf.read(), w0 + d)  # the same fl(W + d) as whole-tensor numpy
    assert record[1].size >= 2 and noise.record_nbytes(record) < w0.size + 64  # ~1 byte an element
    noise.restore([t], [stream], 1e-3, [offset], [record])
    assert t.buf.read().tobytes() == w0.tobytes()


def test_block_add_noise_and_add_match_whole_tensor_numpy():
    shape = (5 * (rng.BLOCK // 2 + 1),)  # a dense head, drawn flat (m·n,), stored m x n
    w0 = np.random.default_rng(1).standard_normal(shape).astype(np.float32).reshape(5, -1)
    t = noise.Target(Buffer(w0.copy()), shape, w0.shape, "out_in")
    key = Key.root(8)
    noise.add_noise([t], [rng.noise_stream(key, "W")], -0.01)
    want = w0 + (np.float32(-0.01) * tensor_noise(key, "W", shape)).reshape(w0.shape)
    np.testing.assert_array_equal(t.buf.read(), want)
    row = np.arange(shape[0], dtype=np.float32)
    noise.add(t, row)  # a 1-D tensor's "row" is the whole vector
    np.testing.assert_array_equal(t.buf.read(), want + row.reshape(w0.shape))


@pytest.mark.parametrize("failing", ["W", "V", "U"])
def test_a_failing_block_leaves_w_as_it_was(monkeypatch, failing):
    # W: live CPU buffers (one batch), V: a device buffer (after the batch), U: stored in,out
    w0 = np.random.default_rng(2).standard_normal((4, rng.BLOCK)).astype(np.float32)
    ts = [_target(w0.copy(), w0.shape, "out_in"), _target(w0.copy(), w0.shape, "out_in", zero_copy=False),
          _target(w0.T.copy(), w0.shape, "in_out")]
    streams = [rng.noise_stream(Key.root(9), n) for n in "WVU"]
    real = rng.fill_block

    def flaky(stream, b, out):
        if stream == streams["WVU".index(failing)] and b == 2:
            raise MemoryError("block 2")
        return real(stream, b, out)

    monkeypatch.setattr(rng, "fill_block", flaky)
    with pytest.raises(MemoryError):
        noise.perturb(ts, streams, 1e-3, [None] * 3)
    monkeypatch.setattr(rng, "fill_block", real)
    for t, want in zip(ts, (w0, w0, w0.T)):
        assert t.buf.read().tobytes() == want.tobytes()


@pytest.mark.parametrize("fail_in", ["perturb", "undo+perturb"])
def test_a_failing_sweep_leaves_w_unperturbed(monkeypatch, fail_in):
    # one live tensor of 3 blocks; fails at block 1: block 0 done, blocks 1-2 not
    w0 = np.random.default_rng(3).standard_normal((3, rng.BLOCK)).astype(np.float32)
    t = _target(w0.copy(), w0.shape, "out_in")
    stream = rng.noise_stream(Key.root(10), "W")
    records = noise.perturb([t], [stream], 1e-3, [None]) if fail_in == "undo+perturb" else None
    op = noise.Sweep(undo=1e-3 if records else None, perturb=-1e-3)
    real, failed = rng.fill_block, []

    def flaky(s, b, out):
        if b == 1 and not failed:  # once: the rollback draws block 1 again
            failed.append(b)
            raise MemoryError("block 1")
        return real(s, b, out)

    monkeypatch.setattr(rng, "fill_block", flaky)
    monkeypatch.setattr(rng, "threads", lambda: 1)  # block 0 is done before block 1 fails
    with pytest.raises(MemoryError):
        noise.sweep([t], [stream], [None], op, records)
    assert t.buf.read().tobytes() == w0.tobytes()


def test_mezo_step_draws_z_3_times_and_equals_separate_sweeps(tmp_path, monkeypatch):
    # perturb(+mu) | undo(+mu) perturb(-mu) | undo(-mu) add(-eta g): 3 draws instead of 5,
    # bit for bit what perturb, restore, perturb, restore, add_noise give
    from edge_zo.optim import mezo
    tiny = _fullrank(tmp_path)
    fused, separate = Runtime(tiny.path), Runtime(tiny.path)
    draws, real = {}, rng.fill_block

    def counting(stream, b, out):
        draws[(stream, b)] = draws.get((stream, b), 0) + 1
        return real(stream, b, out)

    class OneAtATime:  # the runtime, but W restored after every probe (nothing fused)
        shapes = separate.shapes
        add_noise = separate.add_noise

        def losses(self, probes):
            out = [separate.losses([p])[0] for p in probes if separate.export_weights(copy=False) is not None]
            return np.array(out, np.float32)

    config = mezo.MezoConfig(eta=1e-2, mu=1e-2)
    for rt in (fused, separate):
        rt.set_batch(**tiny.batch())
    key = Key.root(4).child("step", 0)
    monkeypatch.setattr(rng, "fill_block", counting)
    _, info = mezo.step(mezo.init(fused.shapes, config, Key.root(4)), fused, key)
    w = fused.export_weights()
    assert set(draws.values()) == {3} and len({s for s, _ in draws}) == len(fused.shapes)
    monkeypatch.setattr(rng, "fill_block", real)
    _, info_separate = mezo.step(mezo.init(separate.shapes, config, Key.root(4)), OneAtATime(), key)
    np.testing.assert_array_equal(info.losses, info_separate.losses)
    for name, want in separate.export_weights().items():
        assert w[name].tobytes() == want.tobytes(), name
    assert any(not np.array_equal(w[n], tiny.weights[n]) for n in w)  # the step moved W


def test_every_read_of_w_after_a_probe_sees_it_restored(tmp_path):
    tiny = _fullrank(tmp_path)
    rt = Runtime(tiny.path)
    rt.set_batch(**tiny.batch())
    w0, scores0 = rt.export_weights(), rt.scores()
    probe = FullRankProbe(Key.root(6), 0.5)
    for read in (rt.scores, lambda: rt.losses([FullRankProbe(Key.root(7), 0.0)])):
        rt.losses([probe])  # leaves W perturbed until it is needed
        read()
    np.testing.assert_array_equal(rt.scores(), scores0)
    rt.losses([probe])
    for n, w in rt.export_weights().items():
        assert w.tobytes() == w0[n].tobytes(), n
