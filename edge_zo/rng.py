"""Counter-based randomness: every draw is a pure function of a key (DESIGN.md 2.3).

A `Key` is a path of ints and strings, e.g. (run seed, "step", 17, "probe", 3). Its bits
come from blake2b over a length-prefixed encoding of the path, never from Python's
`hash()` (salted per process), and seed numpy's Philox. So any draw can be regenerated
in any order, in any process, on any machine: the optimizer, the runtime (which
regenerates full-rank noise from the key instead of storing it) and a resumed run all
see the same numbers. numpy promises the Generator stream only per numpy version; the
tests pin a few values so a change would show.

Tensor noise (`tensor_noise`, the full-rank z and LOREN's u) is the bulk of a MeZO or
LOREN step (10.6 M draws a tensor sweep on MiniLM), so it has its own stream layout,
changed on purpose in issue 8 (golden values in tests/optim/test_rng.py updated): the
flat tensor, in C order of `shape`, is cut into blocks of BLOCK elements; block b is
drawn from its own SFC64 generator whose state is blake2b(key digest, b), by numpy's
float32 ziggurat. A block is a pure function of (key, name, b), so blocks are drawn on
all cores (`parallel`) and the result does not depend on the thread count, and the
runtime can perturb W block by block without holding z for a whole tensor. SFC64 +
numpy's ziggurat is ~1.3x faster a draw than Philox; the blocks give the cores.

Conventions shared with the runtime:
  z for tensor `name` of a probe with key K  =  tensor_noise(K, name, shape)
  orthonormal sketch                         =  orthonormal(K, m, r)  (QR of a Gaussian,
                                                 columns sign-fixed so R has a positive
                                                 diagonal: Haar-distributed, reproducible)
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

Part = int | str


def _encode(path: tuple[Part, ...]) -> bytes:
    # Type tag + length prefix per part: ("ab", "c") and ("a", "bc") and (1,) vs ("1",)
    # must all hash differently.
    out = bytearray()
    for part in path:
        tag, raw = (b"i", str(int(part)).encode()) if isinstance(part, int) else (b"s", part.encode())
        out += tag + len(raw).to_bytes(4, "little") + raw
    return bytes(out)


@dataclass(frozen=True)
class Key:
    """A node in the tree of random streams; `child` derives, `generator` draws."""

    path: tuple[Part, ...]

    @classmethod
    def root(cls, seed: int) -> Key:
        """The run's root key: everything random in a run descends from it."""
        return cls((int(seed),))

    def child(self, *parts: Part) -> Key:
        """A sub-key for a purpose, e.g. key.child("step", t) or key.child("probe", i)."""
        for part in parts:
            if isinstance(part, bool) or not isinstance(part, (int, str)):
                raise TypeError(f"key parts are int or str, got {part!r}")
        return Key(self.path + tuple(parts))

    def digest(self) -> bytes:
        """16 bytes that identify the path (blake2b; never Python's salted hash())."""
        return hashlib.blake2b(_encode(self.path), digest_size=16).digest()

    def generator(self) -> np.random.Generator:
        # 128-bit Philox key from the path digest; the counter starts at 0 for every key.
        return np.random.Generator(np.random.Philox(key=int.from_bytes(self.digest(), "little")))

    def to_list(self) -> list[Part]:
        """JSON-friendly form (journal); `Key(tuple(lst))` inverts it."""
        return list(self.path)


def normal(key: Key, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """Standard normal draws of `shape` from the stream of `key`."""
    return key.generator().standard_normal(shape, dtype=dtype)


def tensor_noise(key: Key, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The probe noise z (or B) for one tensor: what the runtime regenerates per tensor."""
    return draw(noise_stream(key, name), shape)


def draw(stream: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """The whole tensor of a noise stream (module docstring), its blocks on all cores."""
    out = np.empty(int(np.prod(shape, dtype=np.int64)), np.float32)
    parallel(lambda b: fill_block(stream, b, out[b * BLOCK:(b + 1) * BLOCK]), range(n_blocks(out.size)))
    return out.reshape(shape)


# ---- block streams of tensor noise (module docstring) ---------------------------------

BLOCK = 1 << 15  # elements a block: 128 KiB of float32, in a core's L2 with W's block
# Which stream layout `tensor_noise` draws: recorded in every run's config.json, so a run
# started under another layout is refused on resume instead of silently diverging.
# 1: one Philox stream a tensor (before issue 8); 2: SFC64 blocks.
STREAM_VERSION = 2


def noise_stream(key: Key, name: str) -> bytes:
    """The digest that, with a block index, seeds tensor `name`'s noise under `key`."""
    return key.child("z", name).digest()


def n_blocks(size: int) -> int:
    return max(1, -(-size // BLOCK))


def add_rows(z: np.ndarray, offset: np.ndarray, start: int) -> None:
    """z (flat elements [start, start + len(z)) of a tensor with rows of len(offset)) += offset."""
    n, c = offset.size, start % offset.size
    head = min((n - c) % n, z.size)  # the rest of the row the block starts inside
    z[:head] += offset[c:c + head]
    rows = (z.size - head) // n
    z[head:head + rows * n].reshape(rows, n)[...] += offset
    rest = z.size - head - rows * n
    if rest:
        z[z.size - rest:] += offset[:rest]


_local = threading.local()


def fill_block(stream: bytes, b: int, out: np.ndarray) -> np.ndarray:
    """out (float32, the elements [b BLOCK, b BLOCK + len(out)) of the flat tensor) <- z."""
    if not hasattr(_local, "gen"):  # one generator per thread, re-seeded per block
        _local.gen = np.random.Generator(np.random.SFC64(0))
        _local.state = _local.gen.bit_generator.state
    words = hashlib.blake2b(stream + b.to_bytes(8, "little"), digest_size=24).digest()
    state = np.frombuffer(words + (1).to_bytes(8, "little"), np.uint64).copy()
    _local.state["state"]["state"], _local.state["has_uint32"] = state, 0
    _local.gen.bit_generator.state = _local.state
    _local.gen.bit_generator.random_raw(12)  # mix the seed in, as SFC64's own seeding does
    return _local.gen.standard_normal(out=out, dtype=np.float32)


def threads() -> int:
    """Threads for noise blocks: EDGE_ZO_NOISE_THREADS, else the cores this process may use.

    The full-rank host work runs between forwards, when ORT's threads are idle."""
    env = os.environ.get("EDGE_ZO_NOISE_THREADS")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, int(env) if env else min(8, cores))


_pool: list = [None]


def parallel(task, items) -> None:
    """task(item) for every item (e.g. block indices) on `threads()` threads (numpy releases
    the GIL); blocks write disjoint outputs, so the result does not depend on the thread count."""
    items = list(items)
    if len(items) == 1 or threads() == 1:
        for item in items:
            task(item)
        return
    if _pool[0] is None or _pool[0]._max_workers != threads():
        _pool[0] = ThreadPoolExecutor(threads(), thread_name_prefix="edge-zo-noise")
    futures = [_pool[0].submit(task, item) for item in items]
    wait(futures)  # all of them, even after a failure: no block may still be writing
    for future in futures:
        future.result()  # re-raises the first block's exception


def qr_sign_fixed(X: np.ndarray) -> np.ndarray:
    """Q of the reduced QR of X with columns flipped so that diag(R) >= 0.

    The sign fix makes Q a function of X (LAPACK may return either sign) and, for a
    Gaussian X, makes Q Haar-distributed. A zero diagonal entry keeps its column as is.
    """
    Q, R = np.linalg.qr(X)
    # Q <- Q diag(sign(diag R)), with sign(0) taken as +1
    signs = np.where(np.diagonal(R) < 0, -1, 1).astype(Q.dtype)
    return Q * signs


def orthonormal(key: Key, m: int, r: int) -> np.ndarray:
    """An m x r matrix with orthonormal columns (Haar): the sketch A, or a fresh V."""
    # A = Q of QR(Gaussian m x r), sign-fixed
    return qr_sign_fixed(normal(key, (m, r)))
