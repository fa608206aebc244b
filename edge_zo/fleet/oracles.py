"""A fleet step in two halves: probe on the local minibatch, then apply the fleet's losses.

Every edge-zo optimizer is `step(state, oracle, key)` and calls `oracle.losses(probes)`
exactly once per step (edge_zo/optim/estimate.py `evaluate`, LOREN's own estimator); the
update that follows is a function of (state, key, losses) only. A fleet client splits the
step at that call:

  probe:  run `step` on the runtime until it asks for losses; evaluate them on this
          device's minibatch, then abort the step (`Collected`) before any update.
  apply:  run the same `step` again with the fleet's aggregated losses (ApplyOracle, the
          journal's ReplayOracle): every replica applies the same update, bit for bit.

What a step did to the runtime before asking for losses (a sketch bound; on a redraw step
the pending update folded and a new sketch bound) happened during the probe; the apply
half skips exactly those calls, checked by name, so nothing is applied twice. A client
that did not probe the step (it replays, or was restarted) skips nothing.
"""

from __future__ import annotations

import numpy as np

from edge_zo.errors import UserError
from edge_zo.resume import ReplayOracle

# Oracle calls that change the runtime (base.Oracle); everything else only reads it.
MUTATING = ("set_sketch", "fold", "add_noise", "add")


class Collected(Exception):
    """Raised inside `losses`: the probe half is done, the update must not run."""


class ProbeOracle:
    """The runtime, recording the mutating calls made before the step's one `losses` call."""

    def __init__(self, oracle):
        self._oracle, self.calls, self.losses_seen = oracle, [], None

    def __getattr__(self, name: str):
        target = getattr(self._oracle, name)
        if name not in MUTATING:
            return target

        def recorded(*args, **kwargs):
            self.calls.append(name)
            return target(*args, **kwargs)
        return recorded

    def losses(self, probes) -> np.ndarray:
        self.losses_seen = np.asarray(self._oracle.losses(probes), dtype=np.float32)
        raise Collected()


class ApplyOracle(ReplayOracle):
    """The journal's replay oracle (losses given, not evaluated), skipping the calls the
    probe half already made on this runtime (`done`: their names, in order)."""

    def __init__(self, runtime, losses, done: list[str] = ()):
        super().__init__(runtime, losses)
        self._done = list(done)

    def __getattr__(self, name: str):
        target = super().__getattr__(name)
        if name not in MUTATING or not self._done:
            return target

        def skipped(*args, **kwargs):
            expected = self._done.pop(0)
            if expected != name:  # a step is deterministic: the same calls in the same order
                raise UserError(f"fleet step replay called {name} where its probe called {expected}: "
                                "the optimizer is not a function of (state, key, losses)")
        return skipped

    def losses(self, probes) -> np.ndarray:
        if self._done:
            raise UserError(f"fleet step asked for losses before redoing {self._done}: "
                            "the optimizer is not a function of (state, key, losses)")
        return super().losses(probes)
