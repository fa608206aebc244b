"""ZO-Muon: the sketch-subspace gradient, fully orthogonalized by Newton–Schulz.

DESIGN.md 2.2, per trained matrix X (m×n):

    every ν steps:  A ← orthonormal m×r sketch       (no state survives a redraw)
    each step:      G = (1/N) Σ g_i B_i               (estimate.py)
                    O = NS5(G / ‖G‖_F)                (Newton–Schulz, 5 steps, Muon's a,b,c)
                    X ← X − η A O                     (C ← C − η O; X = W + A C)

No momentum. Defaults are the OPTML-Group/ZO-Muon README run (OPT-13B RTE).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from edge_zo.optim.base import StepInfo
from edge_zo.optim.configs import SketchConfig, opt, require
from edge_zo.optim.estimate import estimate_in_sketch, one_d_update, select
from edge_zo.optim.linalg import newton_schulz
from edge_zo.optim.schedule import eta_at
from edge_zo.optim.sketch import SketchState, bind_and_refresh, random_sketch, ranks
from edge_zo.rng import Key


@dataclass(frozen=True)
class ZoMuonConfig(SketchConfig):
    """ZO-Muon with the defaults of its README run (llm/README.md, OPT-13B RTE)."""

    name: ClassVar[str] = "zo-muon"
    nu: int = opt(100, "steps between redraws of the sketch A (ν)")
    estimator: str = opt("forward", "forward (the code with --multiple_sample: N+1 forwards) | central")
    one_d: str = opt("sgd", "1-D parameters: sgd (the code: ZO-SGD at one_d_lr) | frozen")
    ns_steps: int = opt(5, "Newton–Schulz iterations")

    def __post_init__(self):
        super().__post_init__()
        require(self.ns_steps >= 1, f"ns_steps={self.ns_steps} must be >= 1")


# Source: anchors note section 4 (llm/README.md: LR=1e-2 EPS=1e-3 RANK=64 STEP_INTERVAL=100
# OPT='muon' MULTIPLE_SAMPLE=True NUM_SAMPLES=4; 1-D lr hard-coded 1e-7, constant schedule).
PRESETS = {"zo-muon": {}}


@dataclass(frozen=True, eq=False)
class ZoMuonState(SketchState):
    config: ZoMuonConfig


def init(shapes, config: ZoMuonConfig, key: Key) -> ZoMuonState:
    matrices, _ = select(shapes, config.targets)
    rk = ranks(matrices, config.r)
    C = {n: np.zeros((rk[n], s[1]), np.float32) for n, s in matrices.items()}
    return ZoMuonState(config, 0, 0, random_sketch(key, matrices, config.r), C)


def step(state: ZoMuonState, oracle, key: Key) -> tuple[ZoMuonState, StepInfo]:
    cfg, t = state.config, state.step
    _, vectors = select(oracle.shapes, cfg.targets) if cfg.one_d == "sgd" else (None, {})
    eta = eta_at(cfg, t)
    shapes = {n: a.shape for n, a in state.A.items()}
    sketch_id, A, C, redrew = bind_and_refresh(oracle, state, lambda: random_sketch(key, shapes, cfg.r))
    G, losses, g, loss0 = estimate_in_sketch(oracle, sketch_id, C, state, key, vectors)
    # O = NS5(G / ‖G‖_F) ;  C ← C − η O
    C_new = {n: C[n] - np.float32(eta) * newton_schulz(G[n], cfg.ns_steps) for n in A}
    one_d_update(oracle, key, g, cfg.one_d_lr, vectors)
    new = dataclasses.replace(state, step=t + 1, sketch_id=sketch_id, A=A, C=C_new, loss0=loss0)
    return new, StepInfo(t, len(losses), losses, g, key, eta, redraw=redrew, fold=redrew)
