"""Tiny synthetic problems that implement the Oracle protocol in numpy.

`NumpyOracle` is the reference Oracle: the runtime must behave like it. Probes are
evaluated in temporaries (weights never move during a probe), a fold is W ← W + A·C,
add_noise is θ ← θ + α·z(key), add is θ ← θ + δ; a NoiseProbe's offset is added to
every row of z before scaling. Losses are computed in float64 from float32 weights and
returned as float32, as the runtime returns them. Each `losses()` call is one minibatch.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from edge_zo.optim.base import LowRankProbe, NoiseProbe
from edge_zo.rng import Key, tensor_noise


class NumpyOracle:
    def __init__(self, params: dict, loss_fn: Callable, n_data: int, batch: int | None = None, seed: int = 0, grad_fn=None):
        self.params = {n: np.asarray(a, np.float32).copy() for n, a in params.items()}
        self.loss_fn, self.grad_fn = loss_fn, grad_fn
        self.n_data, self.batch, self.seed = n_data, batch, seed
        self.sketch_id, self.A = None, {}
        self.forward_passes = self.calls = self.folds = self.adds = 0

    @property
    def shapes(self):
        return {n: a.shape for n, a in self.params.items()}

    def _rows(self) -> np.ndarray:
        # One minibatch per losses() call, drawn from a counter-based key.
        if self.batch is None:
            return np.arange(self.n_data)
        return Key.root(self.seed).child("batch", self.calls).generator().choice(self.n_data, self.batch, replace=False)

    def effective(self, probe) -> dict:
        """The weights a probe sees, built in new arrays; self.params is never written."""
        theta = dict(self.params)
        noise = probe if isinstance(probe, NoiseProbe) else probe.noise
        if isinstance(probe, LowRankProbe):
            assert probe.sketch_id == self.sketch_id, f"probe uses sketch {probe.sketch_id}, bound {self.sketch_id}"
            for n, D in probe.D.items():
                # X = W + A D
                theta[n] = self.params[n] + self.A[n] @ D
        if noise is not None:
            names = noise.names if noise.names is not None else tuple(self.params)
            offset = noise.offset or {}
            assert set(offset) <= set(names), f"offset for {sorted(set(offset) - set(names))}, not probed"
            for n in names:
                z = tensor_noise(noise.key, n, self.params[n].shape)
                if n in offset:
                    # z + offset, the (n,) offset broadcast over rows
                    z = z + _broadcastable(offset[n], z.shape)
                # θ + scale·(z + offset)
                theta[n] = theta[n] + np.float32(noise.scale) * z
        return theta

    def losses(self, probes) -> np.ndarray:
        rows = self._rows()
        self.calls += 1
        self.forward_passes += len(probes)
        with np.errstate(over="ignore", invalid="ignore"):
            return np.array([self.loss_fn(self.effective(p), rows) for p in probes], np.float32)

    def set_sketch(self, sketch_id, A):
        self.sketch_id, self.A = sketch_id, {n: np.asarray(a, np.float32).copy() for n, a in A.items()}

    def fold(self, C):
        self.folds += 1
        for n, c in C.items():
            # W ← W + A C
            self.params[n] = self.params[n] + self.A[n] @ c

    def add_noise(self, key, alpha, names=None):
        for n in names if names is not None else self.params:
            self.params[n] = self.params[n] + np.float32(alpha) * tensor_noise(key, n, self.params[n].shape)

    def add(self, delta):
        self.adds += 1
        for n, d in delta.items():
            # θ ← θ + δ
            self.params[n] = self.params[n] + _broadcastable(d, self.params[n].shape)

    def loss(self, params=None) -> float:
        """Full-data loss at the current (or given) weights; not counted as a forward."""
        return float(self.loss_fn(params or self.params, np.arange(self.n_data)))

    def grad(self, params=None) -> dict:
        return self.grad_fn(params or self.params)


def _broadcastable(a, shape) -> np.ndarray:
    """float32 `a`, checked to broadcast onto `shape` without changing it (the runtime's rule)."""
    a = np.asarray(a)
    assert a.dtype == np.float32, f"dense offsets/updates are float32, got {a.dtype}"
    assert a.shape in (tuple(shape), tuple(shape[-1:])), f"shape {a.shape} does not broadcast onto {shape}"
    return a


def least_squares(m=12, n=10, n_data=64, seed=0, scale=(1.0, 1.0), batch=None) -> NumpyOracle:
    """F(W, b) = ½·mean_j ‖W z_j + b − y_j‖², y = W* z + b*; columns of z scaled by `scale`."""
    g = np.random.default_rng(seed)
    Z = g.standard_normal((n_data, n)) * np.logspace(np.log10(scale[0]), np.log10(scale[1]), n)
    W_star, b_star = g.standard_normal((m, n)) / np.sqrt(n), g.standard_normal(m)
    Y = Z @ W_star.T + b_star

    def loss(p, rows):
        R = Z[rows] @ p["W"].astype(np.float64).T + p["b"] - Y[rows]
        return 0.5 * np.mean(np.sum(R * R, axis=1))

    def grad(p):
        R = Z @ p["W"].astype(np.float64).T + p["b"] - Y
        return {"W": R.T @ Z / n_data, "b": R.mean(axis=0)}

    params = {"W": np.zeros((m, n)), "b": np.zeros(m)}
    return NumpyOracle(params, loss, n_data, batch, seed, grad)


def softmax_regression(c=6, d=10, n_data=256, batch=64, seed=0) -> NumpyOracle:
    """Cross-entropy of softmax(W z + b) on labels from a planted W* (some label noise)."""
    g = np.random.default_rng(seed)
    Z = g.standard_normal((n_data, d))
    W_star = 2.0 * g.standard_normal((c, d)) / np.sqrt(d)
    labels = np.argmax(Z @ W_star.T + 0.3 * g.standard_normal((n_data, c)), axis=1)

    def loss(p, rows):
        logits = Z[rows] @ p["W"].astype(np.float64).T + p["b"]
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return -np.mean(logp[np.arange(len(rows)), labels[rows]])

    params = {"W": np.zeros((c, d)), "b": np.zeros(c)}
    return NumpyOracle(params, loss, n_data, batch, seed)


def quadratic(m=8, n=6, seed=0, H_scale=1.0) -> NumpyOracle:
    """F(X) = ½‖X − X*‖²_F ·H_scale: ∇F = H_scale·(X − X*), exactly quadratic."""
    g = np.random.default_rng(seed)
    X_star = g.standard_normal((m, n))

    def loss(p, rows):
        D = p["X"].astype(np.float64) - X_star
        return 0.5 * H_scale * np.sum(D * D)

    def grad(p):
        return {"X": H_scale * (p["X"].astype(np.float64) - X_star)}

    return NumpyOracle({"X": np.zeros((m, n))}, loss, 1, None, seed, grad)


def ill_conditioned_quadratic(m=8, n=16, cond=100.0, kind="spectrum", seed=0) -> NumpyOracle:
    """F(X) = ½ vec(D)ᵀ H vec(D), D = X − X*, X* ~ N(0, 1), from X = 0; cond(H) = `cond`.

    spectrum: H = I_m ⊗ diag(d), d_j log-spaced from 1 down to 1/cond: the curvature of a
              linear layer whose input features have variances d_j. No single direction
              dominates, so LOREN's one learned direction per block cannot capture it.
    tiled:    H = I + (cond − 1) v̂v̂ᵀ, v̂ = 1_m ⊗ v/√m, v a random unit vector: one stiff
              direction shared by every row, the form 1_m ⊗ a LOREN's preconditioner learns.
    """
    g = np.random.default_rng(seed)
    X_star = g.standard_normal((m, n))
    if kind == "spectrum":
        d = np.logspace(0.0, -np.log10(cond), n)

        def hess_vec(D):
            # H vec(D) = D diag(d)
            return D * d
    elif kind == "tiled":
        v = g.standard_normal(n)
        V = np.tile(v / np.linalg.norm(v), (m, 1)) / np.sqrt(m)

        def hess_vec(D):
            # H vec(D) = D + (cond − 1)⟨v̂, D⟩ v̂
            return D + (cond - 1.0) * np.sum(V * D) * V
    else:
        raise ValueError(f"kind={kind!r} is not spectrum or tiled")

    def loss(p, rows):
        D = p["X"].astype(np.float64) - X_star
        return 0.5 * np.sum(D * hess_vec(D))

    def grad(p):
        return {"X": hess_vec(p["X"].astype(np.float64) - X_star)}

    return NumpyOracle({"X": np.zeros((m, n))}, loss, 1, None, seed, grad)


PROBLEMS = {"least_squares": least_squares, "softmax": softmax_regression}
