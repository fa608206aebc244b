"""Zeroth-order optimizers in numpy: ZO-MOPI, ZO-Muon, LOZO (and LOZO-M), MeZO, LOREN.

Each is `init(shapes, config, key) -> state` and `step(state, oracle, key) -> (state,
info)` over an `Oracle` (the runtime) that evaluates probes; see base.py. The math is
DESIGN.md section 2; randomness is edge_zo.rng.
"""

from edge_zo.optim.base import (
    ConfigError,
    DivergedError,
    LowRankProbe,
    NoiseProbe,
    Oracle,
    Probe,
    State,
    StepInfo,
)
from edge_zo.optim.registry import OPTIMIZERS, PRESETS, Optimizer, build_config, check_graph, optimizer_for

__all__ = [
    "ConfigError", "DivergedError", "LowRankProbe", "NoiseProbe", "Oracle", "Probe", "State",
    "StepInfo", "OPTIMIZERS", "PRESETS", "Optimizer", "build_config", "check_graph", "optimizer_for",
]
