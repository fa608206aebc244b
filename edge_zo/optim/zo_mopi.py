"""ZO-MOPI: zeroth-order momentum with a rank-k power-iteration sign, in a random sketch.

DESIGN.md 2.1, per trained matrix X (m×n):

    every ν steps:  A ← orthonormal m×r sketch;  M ← A_newᵀ A_old M
    each step:      G = (1/N) Σ g_i B_i                  (estimate.py, central or forward)
                    M = β M + (1 − β) G
                    V = QR(Mᵀ (M V_prev)),  U = NormalizeColumns(M V),  O = U Vᵀ
                    X ← X − η A O                        (C ← C − η O; X = W + A C)

`ZoMopiConfig()` is the method as described (central differences, momentum carried
across redraws); preset `paper-code` is the authors' released run (forward differences,
β = 0, V reset on a redraw, 1-D parameters by ZO-SGD at 1e-7), without its restore bug.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from edge_zo.optim.base import StepInfo
from edge_zo.optim.configs import SketchConfig, _choice, opt, require
from edge_zo.optim.estimate import estimate_in_sketch, one_d_update, select
from edge_zo.optim.linalg import rank_k_sign, top_left_singular
from edge_zo.optim.schedule import eta_at
from edge_zo.optim.sketch import SketchState, bind_and_refresh, random_sketch, ranks
from edge_zo.rng import Key, normal, orthonormal, qr_sign_fixed

SKETCHES = ("random", "momentum")


@dataclass(frozen=True)
class ZoMopiConfig(SketchConfig):
    """ZO-MOPI as the method is described (DESIGN.md 2.1); see PRESETS for the code's run."""

    name: ClassVar[str] = "zo-mopi"
    schedule: str = opt("cosine", "η schedule: cosine by default, since a step of norm η√k stalls at a floor set by η")
    decay_steps: int = opt(4000, "decay horizon (4000: the README's ZO-MOPI run); finetune sets it to the run's steps unless given")
    k: int = opt(32, "rank of the orthogonalized update O (k <= r; clamped per matrix to min(k, r, n))")
    beta: float = opt(0.9, "momentum β of M = βM + (1−β)G (0: no momentum, the released code)")
    reproject: bool = opt(True, "on a redraw carry the momentum over: M ← A_newᵀ A_old M (False: keep M as is)")
    reset_v: bool = opt(False, "on a redraw restart the power iteration from a random V (the released code does)")
    sketch: str = opt("random", "new sketch: random (Haar) | momentum (top-k directions of A_old M, rest random)")

    def __post_init__(self):
        super().__post_init__()
        require(self.k >= 1, f"k={self.k} must be >= 1")
        require(self.k <= self.r, f"k={self.k} must be <= r={self.r}: lower k or raise r")
        require(0 <= self.beta < 1, f"beta={self.beta} must be in [0, 1)")
        _choice("sketch", self.sketch, SKETCHES)


# Sources: DESIGN.md 2.1 and the anchors note, sections 2.2-2.5 (MOFA-LAB/ZO-MOPI README
# command for OPT-13B RTE + scripts/zo_mopi.sh defaults for what the README leaves out).
PRESETS = {
    "zo-mopi": {},
    "paper-code": dict(
        estimator="forward", N=8, beta=0.0, reproject=False, reset_v=True, sketch="random",
        r=64, k=32, nu=500, mu=1e-3, eta=1e-2, schedule="constant", warmup=0,
        one_d="sgd", one_d_lr=1e-7,
    ),
}


@dataclass(frozen=True, eq=False)
class ZoMopiState(SketchState):
    config: ZoMopiConfig
    M: dict  # r×n momentum
    V: dict  # n×k power-iteration state


def _k(cfg: ZoMopiConfig, r: int, n: int) -> int:
    return min(cfg.k, r, n)


def _fresh_V(key: Key, cfg, A, C) -> dict:
    """A random orthonormal n×k start for the power iteration."""
    return {name: orthonormal(key.child("V", name), C[name].shape[1], _k(cfg, *C[name].shape)) for name in A}


def init(shapes, config: ZoMopiConfig, key: Key) -> ZoMopiState:
    matrices, _ = select(shapes, config.targets)
    A = random_sketch(key, matrices, config.r)
    rk = ranks(matrices, config.r)
    C = {n: np.zeros((rk[n], s[1]), np.float32) for n, s in matrices.items()}
    V = _fresh_V(key, config, A, C)
    return ZoMopiState(config, 0, 0, A, C, {n: c.copy() for n, c in C.items()}, V)


def momentum_sketch(key: Key, name: str, A_old: np.ndarray, M: np.ndarray, k: int) -> np.ndarray:
    """Keep the momentum's top-k directions, fill the rest of the sketch at random."""
    m, r = A_old.shape
    U_k = top_left_singular(M, k)
    # A_new = QR([A_old U_k, Gaussian(m, r − k)]), sign-fixed
    return qr_sign_fixed(np.hstack([A_old @ U_k, normal(key.child("sketch", name), (m, r - k))]))


def reproject(A_new: np.ndarray, A_old: np.ndarray, M: np.ndarray) -> np.ndarray:
    """The momentum expressed in the new subspace, so that A_new M_new = P_new (A_old M)."""
    # M ← A_newᵀ (A_old M)
    return A_new.T @ (A_old @ M)


def _new_sketch(state: ZoMopiState, key: Key) -> dict:
    cfg = state.config
    if cfg.sketch == "random":
        return random_sketch(key, {n: a.shape for n, a in state.A.items()}, cfg.r)
    return {n: momentum_sketch(key, n, a, state.M[n], _k(cfg, *state.M[n].shape)) for n, a in state.A.items()}


def step(state: ZoMopiState, oracle, key: Key) -> tuple[ZoMopiState, StepInfo]:
    cfg, t = state.config, state.step
    _, vectors = select(oracle.shapes, cfg.targets) if cfg.one_d == "sgd" else (None, {})
    eta = eta_at(cfg, t)
    sketch_id, A, C, redrew = bind_and_refresh(oracle, state, lambda: _new_sketch(state, key))
    M, V = state.M, state.V
    if redrew and cfg.reproject:
        M = {n: reproject(A[n], state.A[n], M[n]) for n in A}
    if redrew and cfg.reset_v:
        V = _fresh_V(key, cfg, A, C)
    G, losses, g, loss0 = estimate_in_sketch(oracle, sketch_id, C, state, key, vectors)
    M_new, V_new, C_new = {}, {}, {}
    for n in A:
        # M = β M + (1 − β) G
        M_new[n] = cfg.beta * M[n] + (1.0 - cfg.beta) * G[n]
        O, V_new[n] = rank_k_sign(M_new[n], V[n])
        # C ← C − η O   (X ← X − η A O)
        C_new[n] = C[n] - np.float32(eta) * O
    one_d_update(oracle, key, g, cfg.one_d_lr, vectors)
    new = dataclasses.replace(state, step=t + 1, sketch_id=sketch_id, A=A, C=C_new, M=M_new, V=V_new, loss0=loss0)
    return new, StepInfo(t, len(losses), losses, g, key, eta, redraw=redrew, fold=redrew)
