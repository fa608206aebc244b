"""The zeroth-order estimators, written once: probe plans, scalar gradients, 1-D updates.

Every method differences losses along random directions. What is shared:
  - which tensors are trained (`select`);
  - the probe plan of an estimator: central = (+1, −1) per direction, 2N forwards;
    forward = one shared baseline then +1 per direction, N+1 forwards;
  - the scalar projected gradient g_i of each direction from the losses;
  - the subspace gradient G = (1/N) Σ g_i B_i of the sketch methods;
  - ZO-SGD on the 1-D parameters with full Gaussian probes (paper-code, LOZO).
Direction i of a step with key K draws its noise from K.child("probe", i), tensor by
tensor (`edge_zo.rng.tensor_noise`), so the runtime regenerates the same z from a
NoiseProbe's key and nothing is stored.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Sequence

import numpy as np

from edge_zo.optim.base import ConfigError, State, guard
from edge_zo.probes import LowRankProbe, NoiseProbe, Oracle
from edge_zo.rng import Key, tensor_noise

BASELINE = 0  # sign of the unperturbed probe of the forward estimator


def select(shapes: Mapping[str, tuple[int, ...]], targets: Sequence[str]):
    """Split the tensors matching `targets` into matrices {name: (m, n)} and 1-D {name: (n,)}."""
    chosen = [n for n in shapes if any(fnmatch.fnmatchcase(n, p) for p in targets)]
    if not chosen:
        raise ConfigError(f"targets {list(targets)} match none of the trainable tensors {list(shapes)[:8]}...; fix the patterns")
    matrices = {n: tuple(shapes[n]) for n in chosen if len(shapes[n]) == 2}
    vectors = {n: tuple(shapes[n]) for n in chosen if len(shapes[n]) == 1}
    other = [n for n in chosen if len(shapes[n]) not in (1, 2)]
    if other:
        raise ConfigError(f"tensors {other} are neither matrices nor 1-D; reshape them to (out, in) in the bundle")
    return matrices, vectors


def probe_key(key: Key, i: int) -> Key:
    """The key of direction i of a step: its B_i, z_i, and the runtime's NoiseProbe."""
    return key.child("probe", i)


def probe_plan(estimator: str, N: int) -> list[tuple[int, int]]:
    """(direction i, sign) per forward pass, in the order the losses come back."""
    if estimator == "central":
        return [(i, s) for i in range(N) for s in (1, -1)]
    return [(-1, BASELINE)] + [(i, 1) for i in range(N)]


def projected_grads(losses: np.ndarray, estimator: str, N: int, mu: float) -> np.ndarray:
    """Scalar g_i per direction (float64, from the float32 losses)."""
    L = losses.astype(np.float64)
    if estimator == "central":
        # g_i = [F(X + μ d_i) − F(X − μ d_i)] / (2μ)
        return (L[0::2] - L[1::2]) / (2.0 * mu)
    # g_i = [F(X + μ d_i) − F(X)] / μ
    return (L[1:] - L[0]) / mu


def evaluate(oracle: Oracle, probes: list, estimator: str, N: int, state: State):
    """One oracle call (one minibatch) -> (losses, g, loss0); stops cleanly on divergence."""
    losses = np.asarray(oracle.losses(probes), dtype=np.float32)
    if losses.shape != (len(probes),):
        raise ValueError(f"oracle returned {losses.shape} losses for {len(probes)} probes")
    g = projected_grads(losses, estimator, N, state.config.mu)
    return losses, g, guard(losses, g, state)


def one_d_noise(key: Key, i: int, sign: int, mu: float, vectors: Mapping) -> NoiseProbe | None:
    """The 1-D part of direction i's probe: b + sign·μ·z_i, or None when none are trained."""
    if not vectors or sign == BASELINE:
        return None
    return NoiseProbe(probe_key(key, i), sign * mu, tuple(vectors))


def one_d_update(oracle: Oracle, key: Key, g: np.ndarray, lr: float, vectors: Mapping) -> None:
    """ZO-SGD on the 1-D parameters: b <- b − lr·(1/N) Σ_i g_i z_i, z regenerated from keys."""
    if not vectors or lr == 0:
        return
    for i, g_i in enumerate(g):
        oracle.add_noise(probe_key(key, i), -lr * float(g_i) / len(g), tuple(vectors))


def draw_B(key: Key, N: int, shapes_rn: Mapping[str, tuple[int, int]]) -> list[dict[str, np.ndarray]]:
    """B_i ~ N(0, I_{r×n}) per matrix, i = 0..N−1."""
    return [{n: tensor_noise(probe_key(key, i), n, s) for n, s in shapes_rn.items()} for i in range(N)]


class ShiftedSketch(Mapping):
    """A probe's D = C + s·B_i, computed matrix by matrix when the runtime reads it: a step
    holds its N B_i and C, not 2N probe D's besides (SmolLM2, zo-mopi: 8 x 4.6 MiB)."""

    def __init__(self, C: Mapping[str, np.ndarray], B_i: Mapping[str, np.ndarray], s: float):
        self.C, self.B_i, self.s = C, B_i, np.float32(s)

    def __getitem__(self, name: str) -> np.ndarray:
        # D = C + s·B_i
        return self.C[name] + self.s * self.B_i[name]

    def __iter__(self):
        return iter(self.C)

    def __len__(self) -> int:
        return len(self.C)


def sketch_probes(sketch_id, C, B, mu, estimator, key, vectors) -> list[LowRankProbe]:
    """Probes at X = W + A(C ± μ B_i) (central) or W + A C and W + A(C + μ B_i) (forward)."""
    probes = []
    for i, sign in probe_plan(estimator, len(B)):
        # D = C + sign·μ·B_i   (D = C for the baseline)
        D = C if sign == BASELINE else ShiftedSketch(C, B[i], sign * mu)
        probes.append(LowRankProbe(sketch_id, D, one_d_noise(key, i, sign, mu, vectors)))
    return probes


def subspace_gradient(g: np.ndarray, B: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """G = (1/N) Σ_i g_i B_i per matrix (r×n, float32)."""
    N = len(B)
    G = {}
    for n in B[0]:
        acc = np.zeros_like(B[0][n])
        for i in range(N):
            acc += np.float32(g[i] / N) * B[i][n]
        G[n] = acc
    return G


def estimate_in_sketch(oracle: Oracle, sketch_id: int, C, state: State, key: Key, vectors):
    """The sketch methods' estimator: draw B, probe, difference, average -> (G, losses, g, loss0)."""
    cfg = state.config
    B = draw_B(key, cfg.N, {n: C[n].shape for n in C})
    probes = sketch_probes(sketch_id, C, B, cfg.mu, cfg.estimator, key, vectors)
    losses, g, loss0 = evaluate(oracle, probes, cfg.estimator, cfg.N, state)
    return subspace_gradient(g, B), losses, g, loss0
