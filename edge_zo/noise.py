"""Full-rank probes on the bound weights, block by block, on all cores (MeZO, LOREN).

The runtime's full-rank work is, per trained tensor, a sweep doing in order some of

    undo:     W <- the W that the last perturb saw, bit for bit  (restore_inplace)
    perturb:  W <- fl(W + d) and an exact-restore record          (perturb_inplace)
    add:      W <- W + alpha z                                    (the MeZO update)

with d = scale (z + offset) and z = rng.tensor_noise(key, name, shape) regenerated, never
stored. z comes in blocks of rng.BLOCK elements, each a pure function of (key, name,
block), so a block of z is drawn once, turned into each d and applied to the same block
of W while both sit in the core's cache, and the blocks of all tensors of a call run on
all cores (rng.parallel, one batch: no wait at the end of each tensor): one sweep over W
per call, no m x n temporary. One sweep may do several operations with one draw of z:
MeZO's probe pair is perturb(+mu), undo(+mu) + perturb(-mu), undo(-mu) + add(-eta g):
3 draws of z a step instead of 5 (the runtime keeps the last probe's perturbation until
W is next needed, edge_zo/runtime.py), each result bit-identical to the separate calls.

Memory: per thread, 5 scratch blocks (z, scaled z, d and two for the record's arithmetic:
640 KiB in float32), reused; the record (1 byte per element, kept between perturb and
undo; an undo + perturb sweep rewrites it in place). A device W (CUDA) goes through its
host copy one tensor at a time. A W stored in,out (GPT-2's Conv1D: the stored array is
z's transpose) cannot be cut into blocks of z; it is done whole, with one tensor of z
(and two of scratch) at a time.

Exactness: fl(fl(W + d) - d) is not W in general, so `exact_perturb` records, per element, the
integer distance between the bit patterns of W and of the value a plain subtraction would
restore; `exact_restore` adds it back (`exact_perturb`, the end of this file).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from edge_zo import rng


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


@dataclass(frozen=True)
class Sweep:
    """The operations of one sweep, in this order, each at its scale (None: not done).

    undo: restore the perturbation made at this scale (the records are passed in);
    perturb: perturb at this scale (new records returned); add: W <- W + add z.
    """

    undo: float | None = None
    perturb: float | None = None
    add: float | None = None


_local = threading.local()


def _scratch(n: int, dtype) -> tuple[np.ndarray, ...]:
    """This thread's blocks: z, scaled z (float32) and d, s1, s2 (W's dtype), grown on demand."""
    bufs = getattr(_local, "bufs", None)
    if bufs is None or bufs[2].dtype != dtype or bufs[0].size < n:
        bufs = _local.bufs = (*(np.empty(n, np.float32) for _ in range(2)), *(np.empty(n, dtype) for _ in range(3)))
    return tuple(b[:n] for b in bufs)


def _scaled(z: np.ndarray, scale: float, dtype) -> np.ndarray:
    """d = scale z in W's dtype (float32 product, then rounded as `astype` does), in scratch."""
    _, zs, d, _, _ = _scratch(z.size, dtype)
    np.multiply(z, np.float32(scale), out=zs)
    if np.dtype(dtype) == np.float32:
        return zs
    np.copyto(d, zs, casting="same_kind")
    return d


def _done(t: Target, w: np.ndarray) -> None:
    """W was changed in place: count the bytes, push where the buffer is not zero-copy."""
    if t.buf.zero_copy:
        t.buf.counter[0] += w.nbytes
    else:
        t.buf.write(w)


def _live(t: Target) -> bool:
    """W is the bound host array itself and stores z's layout: its blocks are done in place."""
    return t.layout == "out_in" and t.buf.zero_copy


def _blocks(hosts: dict) -> list[tuple[int, int, int, int]]:
    """(tensor i, block b, start, stop) over the flat host W of every tensor in `hosts`."""
    return [(i, b, b * rng.BLOCK, min((b + 1) * rng.BLOCK, w.size))
            for i, w in hosts.items() for b in range(rng.n_blocks(w.size))]


def _slice(record, s: int, e: int):
    """The verbatim (where, values) of a record that fall in flat elements [s, e)."""
    _, where, values = record
    lo, hi = np.searchsorted(where, [s, e])
    return where[lo:hi], values[lo:hi]


class _Job:
    """One sweep over `targets`: op applied block by block, records kept for a rollback."""

    def __init__(self, targets, streams, offsets, op: Sweep, records):
        if op.add is not None and any(o is not None for o in offsets):
            raise ValueError("add_noise adds z itself: offsets only shift probes")
        self.targets, self.streams, self.offsets, self.op = targets, streams, offsets, op
        self.old = records or [None] * len(targets)
        # the new record's int8 part reuses the old one's array: blocks are disjoint, and a
        # block's old k is read (undo) before its new k is written (perturb)
        self.smalls = [r[0] if r is not None else np.empty(int(np.prod(t.shape)), np.int8)
                       for t, r in zip(targets, self.old)]
        self.parts, self.undone, self.finished = {}, set(), set()

    def block(self, task, w) -> None:
        i, b, s, e = task
        flat, small, op = w.reshape(-1)[s:e], self.smalls[i][s:e], self.op
        z = _scratch(e - s, w.dtype)[0]
        rng.fill_block(self.streams[i], b, z)
        if self.offsets[i] is not None:
            rng.add_rows(z, self.offsets[i], s)  # z + offset in float32, as NoiseProbe defines d
        if op.undo is not None:
            restore_inplace(flat, _scaled(z, op.undo, w.dtype), small, *_slice(self.old[i], s, e), start=s)
            self.undone.add(task)
        if op.perturb is not None:
            _, _, _, s1, s2 = _scratch(e - s, w.dtype)
            self.parts[task] = perturb_inplace(flat, _scaled(z, op.perturb, w.dtype), small, s1, s2, start=s)
        if op.add is not None:
            np.add(flat, _scaled(z, op.add, w.dtype), out=flat)

    def whole(self, i, w) -> None:
        """A W stored in,out: the whole tensor's z, transposed (module docstring)."""
        t, op = self.targets[i], self.op
        z = rng.draw(self.streams[i], t.shape)
        if self.offsets[i] is not None:
            z += self.offsets[i]

        def d(scale):
            return (z * np.float32(scale)).reshape(t.matrix).T.astype(w.dtype, copy=False)

        small = self.smalls[i].reshape(w.shape)
        if op.undo is not None:
            restore_inplace(w, d(op.undo), small, *self.old[i][1:])
        if op.perturb is not None:
            self.parts[(i, 0, 0, w.size)] = perturb_inplace(w, d(op.perturb), small, np.empty_like(w),
                                                                 np.empty_like(w))
        if op.add is not None:
            w += d(op.add)

    def record(self, i):
        """Tensor i's new record: its blocks' verbatim parts in order, after the int8 part."""
        mine = [v for k, v in sorted(self.parts.items()) if k[0] == i]
        return (self.smalls[i], *(np.concatenate([p[n] for p in mine]) for n in (0, 1)))

    def run(self) -> list | None:
        """Live W (CPU): the blocks of all of them in one batch on all cores. A device W goes
        through a host copy, pushed when done, one tensor at a time (never a second copy of
        all weights); a W stored in,out is done whole."""
        batch = {i: t.buf.read() for i, t in enumerate(self.targets) if _live(t)}
        try:
            rng.parallel(lambda task: self.block(task, batch[task[0]]), _blocks(batch))
        finally:
            for i, w in batch.items():
                _done(self.targets[i], w)
        self.finished.update(batch)
        for i, t in enumerate(self.targets):
            if i in batch:
                continue
            w = t.buf.read()
            if t.layout == "out_in":
                if w.ctypes.data == t.buf.value.data_ptr():  # a CPU OrtValue's numpy() is its memory:
                    w = w.copy()  # work on a copy, so a failed block leaves the bound W untouched
                rng.parallel(lambda task: self.block(task, w), _blocks({i: w}))
            else:
                self.whole(i, w)
            _done(t, w)
            self.finished.add(i)
        return [self.record(i) for i in range(len(self.targets))] if self.op.perturb is not None else None

    def rollback(self) -> None:
        """After a failure: every W back to the unperturbed W (the W before this sweep when it
        does not undo). A failed add is not undone (W keeps the blocks already added)."""
        op, live = self.op, {i for i, t in enumerate(self.targets) if _live(t)}
        again = []  # (i, scale, record): whole tensors to restore
        for i in range(len(self.targets)):
            if i in self.finished and op.perturb is not None:
                again.append((i, op.perturb, self.record(i)))
            elif i not in self.finished and i not in live and op.undo is not None:
                again.append((i, op.undo, self.old[i]))  # its copy was dropped: still perturbed
        for i, scale, record in again:
            restore([self.targets[i]], [self.streams[i]], scale, [self.offsets[i]], [record])
        old = list(self.old)
        for task in _blocks({i: self.targets[i].buf.host for i in live - self.finished}):
            i = task[0]
            if task in self.parts:  # perturbed by this sweep: undo that
                self.op, self.old[i] = Sweep(undo=op.perturb), (None, *self.parts[task])
            elif op.undo is not None and task not in self.undone:  # not reached: undo the old one
                self.op, self.old[i] = Sweep(undo=op.undo), old[i]
            else:
                continue
            self.block(task, self.targets[i].buf.host)

@dataclass(frozen=True, eq=False)
class Perturbation:
    """W + scale (z(key) + offsets) on tensors `names`, and its exact-restore records: the
    perturbation the runtime keeps on W until W is next needed (edge_zo/runtime.py)."""

    key: object  # edge_zo.rng.Key
    names: list[str]
    offsets: list  # per name: None or a float32 last-dimension vector
    scale: float
    records: list | None = None

    def same_z(self, key, names: list, offsets: list) -> bool:
        """Same z and offsets: one sweep can undo this and apply the other."""
        return (self.key == key and self.names == names
                and all(a is b or (a is not None and b is not None and np.array_equal(a, b))
                        for a, b in zip(self.offsets, offsets)))


def sweep(targets: list, streams: list, offsets: list, op: Sweep, records: list | None = None) -> list | None:
    """Apply `op` to every target in one pass (records: those of the perturbation `op.undo`
    restores); returns the new records when `op.perturb`. If it fails, every W is left
    unperturbed (see `_Job.rollback`) and the error is raised."""
    job = _Job(targets, streams, offsets, op, records)
    try:
        return job.run()
    except BaseException:
        job.rollback()
        raise


def perturb(targets: list, streams: list, scale: float, offsets: list) -> list:
    """W <- fl(W + scale (z + offset)) in place for every target; returns their records for
    `restore`. If anything fails, every W is left as it was."""
    return sweep(targets, streams, offsets, Sweep(perturb=scale))


def restore(targets: list, streams: list, scale: float, offsets: list, records: list) -> None:
    """Every W <- the W `perturb` saw, bit for bit (same streams, scale, offsets)."""
    sweep(targets, streams, offsets, Sweep(undo=scale), records)


def add_noise(targets: list, streams: list, alpha: float) -> None:
    """W <- W + alpha z for every target (alpha z rounded to W's dtype, added in W's dtype)."""
    sweep(targets, streams, [None] * len(targets), Sweep(add=alpha))


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


# ---- exact full-rank perturbation ----------------------------------------------------

_BITS = {2: np.int16, 4: np.int32}


def exact_perturb(w: np.ndarray, d: np.ndarray):
    """(fl(W + d), record) such that `exact_restore(fl(W + d), d, record)` is W bit for bit.

    record = (k, where, values): k int8 per element is bits(W) - bits(fl(fl(W+d) - d)),
    the bit patterns read as integers (wrapping); where k does not fit in int8 (signed
    zeros, |W| << |d|, overflow to inf) the element is kept verbatim as (int32 index,
    value). Exact by construction: restore recomputes the same fl(W1 - d) (elementwise
    IEEE ops are deterministic), and fl(W1 - d) + k is W modulo 2^bits exactly when k
    fits in int8. Memory: 1 byte per perturbed element (1/4 of fp32 W) + 8 bytes per
    verbatim element (a few in 10^4 for Gaussian weights perturbed at mu = 1e-3, see the
    tests). `perturb_inplace` is the same on a block of the bound W, without temporaries.
    """
    w1 = w.copy()
    small = np.empty(w.shape, np.int8)
    where, values = perturb_inplace(w1, d, small, np.empty_like(w), np.empty_like(w))
    return w1, (small, where, values)


def perturb_inplace(w: np.ndarray, d: np.ndarray, small: np.ndarray, s1: np.ndarray,
                    s2: np.ndarray, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """w <- fl(w + d) in place, small <- k (int8, w's shape), returns the verbatim
    (where + start, values); s1, s2 are scratch of w's shape and dtype. See `exact_perturb`."""
    bits = _BITS[w.dtype.itemsize]
    w1 = np.add(w, d, out=s1)  # fl(W + d)
    wr = np.subtract(w1, d, out=s2)  # fl(fl(W + d) - d): what restore will compute
    k = np.subtract(w.view(bits), wr.view(bits), out=wr.view(bits))  # wraps, as restore's add
    np.copyto(small, k, casting="unsafe")  # low 8 bits
    where = np.flatnonzero(k != small)  # k does not fit in int8: keep W verbatim there
    values = w.reshape(-1)[where]  # a copy (fancy indexing), taken before w is overwritten
    np.copyto(w, w1)
    return (where + start).astype(np.int32), values


def exact_restore(w1: np.ndarray, d: np.ndarray, record) -> np.ndarray:
    w = w1.copy()
    restore_inplace(w, d, *record)
    return w


def restore_inplace(w: np.ndarray, d: np.ndarray, small: np.ndarray, where: np.ndarray,
                    values: np.ndarray, start: int = 0) -> None:
    """w <- W, the weights `perturb_inplace` saw (where: flat indices into this block + start)."""
    bits = _BITS[w.dtype.itemsize]
    np.subtract(w, d, out=w)
    np.add(w.view(bits), small, out=w.view(bits))  # wraps modulo 2^bits, as in `exact_perturb`
    if where.size:
        w.reshape(-1)[where - start] = values


def record_nbytes(record) -> int:
    return sum(part.nbytes for part in record)
