"""The step-size schedule η_t: warm-up, then constant, linear or cosine decay.

Why decay matters here: an orthogonalized step (ZO-MOPI, ZO-Muon) has Frobenius norm
η·√k whatever the size of the gradient, so with a constant η the iterate cannot settle
closer to the optimum than about one step: it stalls at a noise floor set by η. Decaying
η lowers that floor. The schedule is a pure function of the step, so resume is exact.
"""

from __future__ import annotations

import math

from edge_zo.optim.configs import CommonConfig


def eta_at(config: CommonConfig, t: int) -> float:
    """η for step t (0-based)."""
    eta, warmup = config.eta, config.warmup
    if t < warmup:
        # η_t = η·(t+1)/warmup: the first step is already non-zero
        return eta * (t + 1) / warmup
    if config.schedule == "constant":
        return eta
    floor = eta * config.eta_min_ratio
    # p = progress through the decay, 0 at the end of warm-up, 1 at decay_steps
    p = min(1.0, (t - warmup) / (config.decay_steps - warmup))
    if config.schedule == "linear":
        # η_t = floor + (η − floor)(1 − p)
        return floor + (eta - floor) * (1.0 - p)
    # η_t = floor + (η − floor)·½(1 + cos πp)
    return floor + (eta - floor) * 0.5 * (1.0 + math.cos(math.pi * p))
