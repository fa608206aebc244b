"""MeZO (ZO-SGD): full-rank Gaussian probes regenerated from a key, never stored.

DESIGN.md 2.2, over every trained tensor θ (matrices and 1-D alike):

    z_i ~ N(0, I)  from key.child("probe", i), tensor by tensor
    g_i = [F(θ + μ z_i) − F(θ − μ z_i)] / (2μ)
    θ  ← θ − η (1/N) Σ_i g_i z_i

N = 1 is the paper's algorithm; N > 1 averages more directions per step. The runtime
evaluates a NoiseProbe without drifting θ (see `Oracle`), and applies the update as
`add_noise(key_i, −η g_i / N)`.

Cost outside the forwards: z is drawn 3 times a step for N = 1 (perturb +μz; undo +μz and
perturb −μz in one sweep; undo −μz and add the update in one sweep: the runtime keeps a
probe's perturbation until W is next needed, edge_zo/noise.py), 4N for N > 1, block by
block, never held for more than one block per thread. Each sweep is ~17 ns per trained
weight on one core (the draw ~11 ns, the exact-restore record the rest), so on a small
model and batch it rivals the forwards (benchmarks/README.md section 1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from edge_zo.optim.base import State, StepInfo
from edge_zo.probes import NoiseProbe
from edge_zo.optim.configs import CommonConfig, opt, require
from edge_zo.optim.estimate import evaluate, probe_key, probe_plan, select
from edge_zo.optim.schedule import eta_at
from edge_zo.rng import Key


@dataclass(frozen=True)
class MezoConfig(CommonConfig):
    """MeZO with the paper's full-parameter defaults (OPT-13B: LR {1e-6, 1e-7}, EPS 1e-3)."""

    name: ClassVar[str] = "mezo"
    eta: float = opt(1e-7, "step size η (paper grid {1e-6, 1e-7} for full-parameter OPT-13B)")
    N: int = opt(1, "probe directions per step (the paper: 1)")

    def __post_init__(self):
        super().__post_init__()
        require(self.N >= 1, f"N={self.N} must be >= 1")


# Source: anchors note section 5 (princeton-nlp/MeZO large_models README + mezo.sh).
PRESETS = {"mezo": {}}


@dataclass(frozen=True, eq=False)
class MezoState(State):
    config: MezoConfig
    step: int


def init(shapes, config: MezoConfig, key: Key) -> MezoState:
    select(shapes, config.targets)  # fail at init, not at step 0, if targets match nothing
    return MezoState(config, 0)


def step(state: MezoState, oracle, key: Key) -> tuple[MezoState, StepInfo]:
    cfg, t = state.config, state.step
    matrices, vectors = select(oracle.shapes, cfg.targets)
    names = tuple(matrices) + tuple(vectors)
    eta = eta_at(cfg, t)
    plan = probe_plan("central", cfg.N)
    # θ ± μ z_i
    probes = [NoiseProbe(probe_key(key, i), s * cfg.mu, names) for i, s in plan]
    losses, g, loss0 = evaluate(oracle, probes, "central", cfg.N, state)
    for i, g_i in enumerate(g):
        # θ ← θ − η g_i z_i / N
        oracle.add_noise(probe_key(key, i), -eta * float(g_i) / cfg.N, names)
    return dataclasses.replace(state, step=t + 1, loss0=loss0), StepInfo(t, len(losses), losses, g, key, eta)
