"""Counter-based randomness: every draw is a pure function of a key (DESIGN.md 2.3).

A `Key` is a path of ints and strings, e.g. (run seed, "step", 17, "probe", 3). Its bits
come from blake2b over a length-prefixed encoding of the path, never from Python's
`hash()` (salted per process), and seed numpy's Philox. So any draw can be regenerated
in any order, in any process, on any machine: the optimizer, the runtime (which
regenerates full-rank noise from the key instead of storing it) and a resumed run all
see the same numbers. numpy promises the Generator stream only per numpy version; the
tests pin a few values so a change would show.

Conventions shared with the runtime:
  z for tensor `name` of a probe with key K  =  tensor_noise(K, name, shape)
  orthonormal sketch                         =  orthonormal(K, m, r)  (QR of a Gaussian,
                                                 columns sign-fixed so R has a positive
                                                 diagonal: Haar-distributed, reproducible)
"""

from __future__ import annotations

import hashlib
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

    def generator(self) -> np.random.Generator:
        # 128-bit Philox key from the path digest; the counter starts at 0 for every key.
        digest = hashlib.blake2b(_encode(self.path), digest_size=16).digest()
        return np.random.Generator(np.random.Philox(key=int.from_bytes(digest, "little")))

    def to_list(self) -> list[Part]:
        """JSON-friendly form (journal); `Key(tuple(lst))` inverts it."""
        return list(self.path)


def normal(key: Key, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """Standard normal draws of `shape` from the stream of `key`."""
    return key.generator().standard_normal(shape, dtype=dtype)


def tensor_noise(key: Key, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The probe noise z (or B) for one tensor: what the runtime regenerates per tensor."""
    return normal(key.child("z", name), tuple(shape))


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
