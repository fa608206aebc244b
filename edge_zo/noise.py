"""Full-rank probes on the bound weights, block by block, on all cores (MeZO, LOREN).

The runtime's full-rank work is, per trained tensor, one of

    perturb:  W <- fl(W + d) and an exact-restore record   (fold.perturb_inplace)
    restore:  W <- the W that perturb saw, bit for bit     (fold.restore_inplace)
    add:      W <- W + alpha z                             (the MeZO update)

with d = scale (z + offset) and z = rng.tensor_noise(key, name, shape) regenerated, never
stored. z comes in blocks of rng.BLOCK elements, each a pure function of (key, name,
block), so a block of z is drawn, turned into d and applied to the same block of W while
both sit in the core's cache, and the blocks of all tensors of a call run on all cores
(rng.parallel, one batch: no wait at the end of each tensor): one sweep over W per
operation instead of ~6 over whole-tensor temporaries, no m x n temporary.

Memory: per thread, 4 scratch blocks (z, d and two for the record's arithmetic: 512 KiB
in float32), reused; the record (1 byte per element, kept between perturb and restore, as
before). A device W (CUDA) goes through its host copy one tensor at a time, as before. A
W stored in,out (GPT-2's Conv1D: the stored array is z's transpose) cannot be cut into
blocks of z; it is done whole, with one tensor of z (and two of scratch) at a time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from edge_zo import fold, rng


@dataclass(frozen=True)
class Target:
    """One trained tensor: its bound buffer, z's shape, and how W stores z's layout.

    shape: the optimizer's shape (z is drawn with it; a dense head may be flat (m*n,)),
    matrix: the manifest's (m, n), layout: "out_in" (W is z reshaped) or "in_out" (W is zᵀ).
    """

    buf: object  # edge_zo.providers.Buffer
    shape: tuple[int, ...]
    matrix: tuple[int, int]
    layout: str


_local = threading.local()


def _scratch(n: int, dtype) -> tuple[np.ndarray, ...]:
    """This thread's blocks: z (float32) and d, s1, s2 (W's dtype), grown on demand."""
    bufs = getattr(_local, "bufs", None)
    if bufs is None or bufs[1].dtype != dtype or bufs[0].size < n:
        bufs = _local.bufs = (np.empty(n, np.float32), *(np.empty(n, dtype) for _ in range(3)))
    return tuple(b[:n] for b in bufs)


def _d(stream: bytes, b: int, start: int, n: int, scale: float, offset, dtype) -> tuple[np.ndarray, ...]:
    """(d, s1, s2): block b of d = scale (z + offset) in W's dtype, and two scratch blocks."""
    z, d, s1, s2 = _scratch(n, dtype)
    rng.fill_block(stream, b, z)
    if offset is not None:
        rng.add_rows(z, offset, start)  # z + offset in float32, as NoiseProbe defines d
    np.multiply(z, np.float32(scale), out=z)
    if np.dtype(dtype) != np.float32:
        np.copyto(d, z, casting="same_kind")  # rounded to W's dtype, as `astype` does
        return d, s1, s2
    return z, s1, s2


def _done(t: Target, w: np.ndarray) -> None:
    """W was changed in place: count the bytes, push where the buffer is not zero-copy."""
    if t.buf.zero_copy:
        t.buf.counter[0] += w.nbytes
    else:
        t.buf.write(w)


def _whole_d(t: Target, stream: bytes, scale: float, offset) -> np.ndarray:
    """d for a W stored in,out: the whole tensor's z, transposed (see the module docstring)."""
    z = rng.draw(stream, t.shape)
    if offset is not None:
        z += offset
    z *= np.float32(scale)
    return z.reshape(t.matrix).T.astype(t.buf.dtype, copy=False)


def _blocks(hosts: dict) -> list[tuple[int, int, int, int]]:
    """(tensor i, block b, start, stop) over the flat host W of every tensor in `hosts`."""
    return [(i, b, b * rng.BLOCK, min((b + 1) * rng.BLOCK, w.size))
            for i, w in hosts.items() for b in range(rng.n_blocks(w.size))]


def _live(t: Target) -> bool:
    """W is the bound host array itself and stores z's layout: its blocks are done in place."""
    return t.layout == "out_in" and t.buf.zero_copy


def _sweep(targets: list, block_op, whole_op, finished=lambda i: None) -> None:
    """block_op((i, b, start, stop), host W) over every out,in target, whole_op(i, host W)
    for in,out ones. Live W (CPU): the blocks of all of them in one batch on all cores.
    A device W goes through a host copy, pushed when done, one tensor at a time (never a
    second copy of all weights); `finished(i)` follows each tensor (the batch: at its end)."""
    batch = {i: t.buf.read() for i, t in enumerate(targets) if _live(t)}
    try:
        rng.parallel(lambda task: block_op(task, batch[task[0]]), _blocks(batch))
    finally:
        for i, w in batch.items():
            _done(targets[i], w)
    for i in batch:
        finished(i)
    for i, t in enumerate(targets):
        if i in batch:
            continue
        w = t.buf.read()
        if t.layout == "out_in":
            if w.ctypes.data == t.buf.value.data_ptr():  # a CPU OrtValue's numpy() is its memory:
                w = w.copy()  # work on a copy, so a failed block leaves the bound W untouched
            rng.parallel(lambda task: block_op(task, w), _blocks({i: w}))
        else:
            whole_op(i, w)
        _done(t, w)
        finished(i)


def perturb(targets: list, streams: list, scale: float, offsets: list) -> list:
    """W <- fl(W + scale (z + offset)) in place for every target; returns their records for
    `restore`. If anything fails, every W is left as it was."""
    records, parts = [None] * len(targets), {}
    smalls = [np.empty(int(np.prod(t.shape)), np.int8) for t in targets]

    def block(task, w):
        i, b, s, e = task
        d, s1, s2 = _d(streams[i], b, s, e - s, scale, offsets[i], w.dtype)
        parts[task] = fold.perturb_inplace(w.reshape(-1)[s:e], d, smalls[i][s:e], s1, s2, start=s)

    def whole(i, w):
        d = _whole_d(targets[i], streams[i], scale, offsets[i])
        parts[(i, 0, 0, w.size)] = fold.perturb_inplace(w, d, smalls[i].reshape(w.shape), np.empty_like(w),
                                                        np.empty_like(w))

    def finished(i):
        mine = [v for k, v in sorted(parts.items()) if k[0] == i]  # its blocks in order
        records[i] = (smalls[i], *(np.concatenate([p[n] for p in mine]) for n in (0, 1)))

    try:
        _sweep(targets, block, whole, finished)
    except BaseException:  # put back what was perturbed: W is whole, or untouched
        done = [i for i, r in enumerate(records) if r is not None]
        restore(*([arg[i] for i in done] for arg in (targets, streams)), scale,
                *([arg[i] for i in done] for arg in (offsets, records)))
        for (i, b, s, e), (where, values) in _partial(parts, records, targets):
            w = targets[i].buf.host.reshape(-1)[s:e]
            d = _d(streams[i], b, s, e - s, scale, offsets[i], w.dtype)[0]
            fold.restore_inplace(w, d, smalls[i][s:e], where, values, start=s)
        raise
    return records


def _partial(parts: dict, records: list, targets: list) -> list:
    """Blocks perturbed in place in live W whose tensor did not finish (a failed batch)."""
    return [(k, v) for k, v in parts.items() if records[k[0]] is None and _live(targets[k[0]])]


def restore(targets: list, streams: list, scale: float, offsets: list, records: list) -> None:
    """Every W <- the W `perturb` saw, bit for bit (same streams, scale, offsets)."""
    def block(task, w):
        i, b, s, e = task
        small, where, values = records[i]
        d = _d(streams[i], b, s, e - s, scale, offsets[i], w.dtype)[0]
        lo, hi = np.searchsorted(where, [s, e])
        fold.restore_inplace(w.reshape(-1)[s:e], d, small[s:e], where[lo:hi], values[lo:hi], start=s)

    def whole(i, w):
        small, where, values = records[i]
        d = _whole_d(targets[i], streams[i], scale, offsets[i])
        fold.restore_inplace(w, d, small.reshape(w.shape), where, values)

    _sweep(targets, block, whole)


def add_noise(targets: list, streams: list, alpha: float) -> None:
    """W <- W + alpha z for every target (alpha z rounded to W's dtype, added in W's dtype)."""
    def block(task, w):
        i, b, s, e = task
        flat = w.reshape(-1)[s:e]
        np.add(flat, _d(streams[i], b, s, e - s, alpha, None, w.dtype)[0], out=flat)

    def whole(i, w):
        w += _whole_d(targets[i], streams[i], alpha, None)

    _sweep(targets, block, whole)


def add(t: Target, delta: np.ndarray) -> None:
    """W <- W + delta in place (delta: z's shape, or a last-dimension row added to every
    row; rounded to W's dtype first, then added in W's dtype): LOREN's update."""
    w = t.buf.read()
    if t.layout == "out_in":
        view = w.reshape(t.shape)
    else:  # W is zᵀ: add deltaᵀ (a row vector of z becomes a column of W)
        view, delta = w, np.broadcast_to(delta, t.shape).reshape(t.matrix).T
    np.add(view, delta.astype(w.dtype, copy=False), out=view)
    _done(t, w)
