"""The orthonormal sketch A of ZO-MOPI and ZO-Muon: draw, bind, fold on a redraw.

Between redraws the weights the model sees are X = W + A·C, where W is fixed in the
runtime and C (r×n) accumulates the updates. Every ν steps C is folded into W with the
old A (W ← W + A·C, C ← 0) and a new A is drawn and bound. Nothing is perturbed in
place, so a redraw cannot leave a probe behind in the weights (the authors' code did).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from edge_zo.optim.base import State
from edge_zo.probes import Oracle
from edge_zo.rng import Key, orthonormal


@dataclass(frozen=True, eq=False)
class SketchState(State):
    """What every sketch method keeps: the weights seen are X = W + A·C."""

    config: typing.Any
    step: int
    sketch_id: int  # id of the sketch A bound in the oracle
    A: dict  # m×r orthonormal sketch per matrix
    C: dict  # r×n update accumulated since the last fold


def ranks(matrices: Mapping[str, tuple[int, int]], r: int) -> dict[str, int]:
    """Per-matrix rank: r, clamped to m (an m×r orthonormal A needs r <= m)."""
    return {n: min(r, m) for n, (m, _) in matrices.items()}


def random_sketch(key: Key, matrices, r: int) -> dict[str, np.ndarray]:
    """A ← orthonormal m×r sketch per matrix (QR of a Gaussian, sign-fixed)."""
    rk = ranks(matrices, r)
    return {n: orthonormal(key.child("sketch", n), m, rk[n]) for n, (m, _) in matrices.items()}


def zeros_like(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {n: np.zeros_like(a) for n, a in arrays.items()}


def is_redraw(t: int, nu: int) -> bool:
    """A is redrawn at steps ν, 2ν, ...; step 0 uses the sketch drawn by init."""
    return t > 0 and t % nu == 0


def bind_and_refresh(oracle: Oracle, state, draw: Callable[[], dict]):
    """Bind the current sketch; on a redraw step fold C, draw a new A, bind it.

    Returns (sketch_id, A, C, redrew). `draw` is called only on a redraw.
    """
    oracle.set_sketch(state.sketch_id, state.A)
    if not is_redraw(state.step, state.config.nu):
        return state.sketch_id, state.A, state.C, False
    # W ← W + A_old C ; C ← 0
    oracle.fold(state.C)
    A = draw()
    oracle.set_sketch(state.sketch_id + 1, A)
    return state.sketch_id + 1, A, zeros_like(state.C), True


def pending(state, oracle: Oracle) -> dict:
    """The update not yet folded into W (X = W + A C), with its sketch bound in the oracle."""
    oracle.set_sketch(state.sketch_id, state.A)
    return state.C


def flush(state, oracle: Oracle):
    """Fold the pending update into the runtime's weights (before deploy or export)."""
    oracle.fold(pending(state, oracle))
    return dataclasses.replace(state, C=zeros_like(state.C))
