"""LOZO and LOZO-M: low-rank two-point probes μ U Vᵀ with a lazily redrawn V.

DESIGN.md 2.2, per trained matrix X (m×n), with the official code's conventions:

    every ν steps:  V ~ N(0, I_{n×r})          (LOZO-M: M ← M V_oldᵀ V_new / n)
    each step:      U ~ N(0, I_{m×r})
                    g = [F(X + μ U Vᵀ) − F(X − μ U Vᵀ)] / (2μ)     (no 1/r factor)
    LOZO:           X ← X − η g U Vᵀ
    LOZO-M (β>0):   M = β M + (1 − β) g U ;  X ← X − η M Vᵀ

In the runtime's terms the left factor is the sketch: bind A = U, probe D = ±μ Vᵀ, and
fold the update every step (W ← W + U·(−η g Vᵀ); LOZO-M binds A = M and folds −η Vᵀ).
A fold costs m·n·r multiply-adds, small against a forward pass for LOZO's r of 1-4.
The 1/n in the transport is there because E[VᵀV] = n·I for a Gaussian V.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from edge_zo.optim.base import State, StepInfo
from edge_zo.probes import LowRankProbe
from edge_zo.optim.configs import LowRankConfig, opt, require
from edge_zo.optim.estimate import evaluate, one_d_noise, one_d_update, probe_plan, select
from edge_zo.optim.schedule import eta_at
from edge_zo.optim.sketch import is_redraw
from edge_zo.rng import Key, normal


@dataclass(frozen=True)
class LozoConfig(LowRankConfig):
    """LOZO with the official OPT code's defaults (optsuite/LOZO, run_lozo.py)."""

    name: ClassVar[str] = "lozo"
    eta: float = opt(1e-7, "step size η (README grid {1e-6, 1e-7} for OPT-13B)")
    r: int = opt(2, "rank of U Vᵀ (run_lozo.py default; README grid {1, 2})")
    nu: int = opt(50, "steps between redraws of V (run_lozo.py default; README grid {50, 100})")
    beta: float = opt(0.0, "momentum β in U-space: 0 is LOZO, > 0 is LOZO-M")
    one_d: str = opt("sgd", "1-D parameters: sgd (the code: full Gaussian z, same g) | frozen")
    one_d_lr: float = opt(1e-7, "step size of the 1-D parameters (the code uses η; kept equal by default)")

    def __post_init__(self):
        super().__post_init__()
        require(0 <= self.beta < 1, f"beta={self.beta} must be in [0, 1)")


@dataclass(frozen=True)
class LozoMConfig(LozoConfig):
    """LOZO-M with the medium-models code's defaults (β 0.9, r 4, ν 50)."""

    name: ClassVar[str] = "lozo-m"
    beta: float = opt(0.9, "momentum β in U-space (LOZO-M, medium_models/src/LOZOtrainer.py)")
    r: int = opt(4, "rank of U Vᵀ (LOZO-M default)")


# Sources: anchors note section 6 (run_lozo.py, lozo.sh, README grid; LOZO-M defaults).
PRESETS = {"lozo": {}}
PRESETS_M = {"lozo-m": {}}


@dataclass(frozen=True, eq=False)
class LozoState(State):
    config: LozoConfig
    step: int
    sketch_id: int  # id of the last left factor bound in the oracle
    V: dict  # n×r lazy right factor per matrix
    M: dict  # m×r momentum per matrix (LOZO-M; empty for LOZO)


def init(shapes, config: LozoConfig, key: Key) -> LozoState:
    matrices, _ = select(shapes, config.targets)
    V = {n: normal(key.child("V", n), (s[1], config.r)) for n, s in matrices.items()}
    M = {n: np.zeros((s[0], config.r), np.float32) for n, s in matrices.items()} if config.beta > 0 else {}
    return LozoState(config, 0, 0, V, M)


def transport(M: np.ndarray, V_old: np.ndarray, V_new: np.ndarray) -> np.ndarray:
    """LOZO-M's momentum carried onto a new V."""
    # M ← M V_oldᵀ V_new / n
    return M @ (V_old.T @ V_new) / np.float32(V_old.shape[0])


def step(state: LozoState, oracle, key: Key) -> tuple[LozoState, StepInfo]:
    cfg, t = state.config, state.step
    matrices, vectors = select(oracle.shapes, cfg.targets)
    vectors = vectors if cfg.one_d == "sgd" else {}
    eta = eta_at(cfg, t)
    V, M, redrew = state.V, state.M, is_redraw(t, cfg.nu)
    if redrew:
        V = {n: normal(key.child("V", n), v.shape) for n, v in state.V.items()}
        M = {n: transport(M[n], state.V[n], V[n]) for n in M}
    U = {n: normal(key.child("U", n), (matrices[n][0], cfg.r)) for n in V}
    sid = state.sketch_id + 1
    oracle.set_sketch(sid, U)
    probes = [
        # X ± μ U Vᵀ = W + U (±μ Vᵀ)
        LowRankProbe(sid, {n: np.float32(s * cfg.mu) * V[n].T for n in V}, one_d_noise(key, i, s, cfg.mu, vectors))
        for i, s in probe_plan("central", 1)
    ]
    losses, g, loss0 = evaluate(oracle, probes, "central", 1, state)
    if cfg.beta == 0:
        # X ← X − η g U Vᵀ
        oracle.fold({n: np.float32(-eta * g[0]) * V[n].T for n in V})
    else:
        # M = β M + (1 − β) g U ;  X ← X − η M Vᵀ
        M = {n: cfg.beta * M[n] + np.float32((1 - cfg.beta) * g[0]) * U[n] for n in M}
        sid += 1
        oracle.set_sketch(sid, M)
        oracle.fold({n: np.float32(-eta) * V[n].T for n in V})
    one_d_update(oracle, key, g, cfg.one_d_lr, vectors)
    new = dataclasses.replace(state, step=t + 1, sketch_id=sid, V=V, M=M, loss0=loss0)
    return new, StepInfo(t, len(losses), losses, g, key, eta, redraw=redrew, fold=True)
