"""Exactness of the math: power iteration, the rank-k sign, reprojection, restore, estimator."""

from __future__ import annotations

import copy
from statistics import NormalDist

import numpy as np
import pytest

from edge_zo.optim import OPTIMIZERS, build_config
from edge_zo.optim.estimate import estimate_in_sketch
from edge_zo.optim.linalg import newton_schulz, power_sweep, rank_k_sign
from edge_zo.optim.zo_mopi import ZoMopiConfig, init as mopi_init, reproject, step as mopi_step
from edge_zo.rng import Key, normal, orthonormal
from tests.optim.problems import NumpyOracle, least_squares, quadratic
from tests.optim.test_conformance import CASES, run

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7


def _matrix_with_spectrum(s, r, n, seed=0):
    """M = P diag(s) Qᵀ with known singular vectors (r×n)."""
    P = orthonormal(Key.root(seed).child("P"), r, len(s))
    Q = orthonormal(Key.root(seed).child("Q"), n, len(s))
    return (P * np.float32(s)) @ Q.T, P, Q


def test_repeated_power_sweeps_converge_to_top_k_singular_vectors():
    s = np.array([10, 8, 6, 4, 2, 1, 0.5, 0.25])
    M, P, Q = _matrix_with_spectrum(s, 8, 12)
    k = 3
    V = orthonormal(Key.root(1), 12, k)
    for _ in range(60):  # error shrinks by (σ4/σ3)² = 4/9 a sweep: 1e-21 after 60
        V = power_sweep(M, V)
    O, V = rank_k_sign(M, V)
    U_svd, _, Vt_svd = np.linalg.svd(M.astype(np.float64))
    # Each fp32 sweep perturbs the fixed point by ~ n·eps32 ≈ 1.4e-6 relative, amplified by
    # 1/(1 − 4/9) < 2 at the fixed point: 1e-5 leaves a 3× margin.
    tol = 1e-5
    proj_err = V @ V.T - Vt_svd[:k].T @ Vt_svd[:k]
    assert np.linalg.norm(proj_err, 2) < tol
    # U = NormalizeColumns(M V) are then the top-k left singular vectors (up to sign)
    U = O @ V
    assert np.allclose(np.abs(U.T @ U_svd[:, :k]), np.eye(k), atol=tol)


def test_O_has_orthonormal_rank_k_structure_after_one_sweep():
    M = normal(Key.root(2), (8, 12))  # unconverged: a single sweep from a random V
    k = 3
    O, V = rank_k_sign(M, orthonormal(Key.root(3), 12, k))
    # V has orthonormal columns, U unit columns, so ‖O‖_F² = k and rank(O) = k.
    # fp32 QR and norms are accurate to a few eps32 per entry: tol = 50·eps32.
    tol = 50 * EPS32
    assert np.allclose(V.T @ V, np.eye(k), atol=tol)
    assert np.allclose(np.linalg.norm(O @ V, axis=0), 1.0, atol=tol)
    sv = np.linalg.svd(O, compute_uv=False)
    assert np.sum(sv > 1e-3) == k and np.all(sv[k:] < tol)
    assert abs(np.sum(O * O) - k) < k * tol


def test_converged_O_is_the_rank_k_matrix_sign():
    M, P, Q = _matrix_with_spectrum(np.array([5, 4, 3, 0.1, 0.05]), 6, 10)
    V = orthonormal(Key.root(4), 10, 3)
    for _ in range(40):
        O, V = rank_k_sign(M, V)
    # O = P_k Q_kᵀ: singular values all 1 (fp32 iteration accuracy, tol 1e-5 as above)
    assert np.allclose(O, P[:, :3] @ Q[:, :3].T, atol=1e-5)


def test_newton_schulz_flattens_the_spectrum():
    M, _, _ = _matrix_with_spectrum(np.array([10, 3, 1, 0.3]), 6, 10)
    sv = np.linalg.svd(newton_schulz(M), compute_uv=False)
    # Muon's coefficients give S' in roughly [0.68, 1.13], not exactly 1 (see linalg.py).
    assert np.all((sv[:4] > 0.6) & (sv[:4] < 1.2))
    # Null directions hold only fp32 rounding (~eps32 after normalizing), which each
    # iteration can multiply by at most a = 3.4445: eps32·a⁵ ≈ 6e-5 < 1e-4.
    assert np.all(sv[4:] < 1e-4)


def test_reprojection_is_the_projection_of_A_old_M_onto_the_new_subspace():
    A_old, A_new = orthonormal(Key.root(5), 30, 6), orthonormal(Key.root(6), 30, 6)
    M = normal(Key.root(7), (6, 9))
    M_new = reproject(A_new, A_old, M)
    # A_new M_new = (A_new A_newᵀ)(A_old M); fp32 products of length 30: tol 1e-5 absolute
    assert np.allclose(A_new @ M_new, (A_new @ A_new.T) @ (A_old @ M), atol=1e-5)


def _constant_oracle(shapes):
    # Every probe sees the same loss: g = 0, so G = 0 and M evolves by the redraw alone.
    return NumpyOracle({n: np.zeros(s) for n, s in shapes.items()}, lambda p, rows: 1.0, 1)


@pytest.mark.parametrize("reproject_on", [True, False])
def test_zo_mopi_step_reprojects_momentum_on_a_redraw(reproject_on):
    shapes = {"W": (20, 7)}
    cfg = ZoMopiConfig(r=5, k=2, nu=1, beta=0.9, reproject=reproject_on)
    state = mopi_init(shapes, cfg, Key.root(0))
    state = type(state)(**{**state.__dict__, "M": {"W": normal(Key.root(9), (5, 7))}})
    new, info = mopi_step(state.__class__(**{**state.__dict__, "step": 1}), _constant_oracle(shapes), Key.root(1))
    assert info.redraw and new.sketch_id == 1
    carried = reproject(new.A["W"], state.A["W"], state.M["W"]) if reproject_on else state.M["W"]
    # M = β·(A_newᵀ A_old M) + (1−β)·0, computed by the same operations: bit-exact
    assert new.M["W"].tobytes() == (0.9 * carried).tobytes()


@pytest.mark.parametrize("case", sorted(CASES))
def test_probes_and_redraws_leave_weights_bit_exact(case):
    # With η = 0 every update is zero, so after many steps (crossing redraws) the weights
    # must be exactly where they started: probing never writes into the weights.
    oracle = least_squares()
    oracle.params = {n: normal(Key.root(11).child(n), a.shape) for n, a in oracle.params.items()}
    start = copy.deepcopy(oracle.params)
    overrides = dict(eta=0.0) if case == "mezo" else dict(eta=0.0, one_d_lr=0.0)
    state, infos = run(case, oracle, steps=7, nu=3, **overrides)
    assert any(i.redraw for i in infos) or case in ("mezo", "loren")  # no sketch to redraw
    OPTIMIZERS[state.config.name].flush(state, oracle)
    for n in start:
        assert oracle.params[n].tobytes() == start[n].tobytes(), n


def test_weights_depend_only_on_the_update():
    # ZO-MOPI after a fold: W_runtime + A C equals the sum of the applied updates.
    oracle = least_squares()
    state, infos = run("zo-mopi", oracle, steps=9, nu=4)
    assert sum(i.fold for i in infos) == 2
    before = copy.deepcopy(oracle.params["W"])
    OPTIMIZERS["zo-mopi"].flush(state, oracle)
    assert np.allclose(oracle.params["W"], before + state.A["W"] @ state.C["W"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", [0])
def test_central_estimator_is_unbiased_on_a_quadratic(seed):
    # F(X) = ½‖X − X*‖²: the central difference is exact for a quadratic, so
    # G = (1/N) Σ ⟨P, B_i⟩ B_i with P = Aᵀ∇F, and E[G] = P because E[B Bᵀ-contraction] = I.
    # Per entry, Var(⟨P,B⟩ B_jl) = ‖P‖² + P_jl², so the mean over N has that variance / N.
    # Tolerance: z* with a Bonferroni bound so that all r·n entries pass together with
    # probability ≥ 1 − 1e-4 (a derived bound; the seed is fixed, nothing is tuned).
    m, n, r, N = 8, 6, 4, 4000
    oracle = quadratic(m, n, seed)
    cfg = build_config("zo-mopi", dict(r=r, k=2, N=N, mu=1e-2, estimator="central"))
    state = OPTIMIZERS["zo-mopi"].init(oracle.shapes, cfg, Key.root(seed))
    oracle.set_sketch(0, state.A)
    G, losses, g, _ = estimate_in_sketch(oracle, 0, state.C, state, Key.root(seed).child("est"), {})
    P = state.A["X"].T @ oracle.grad()["X"]
    sigma = np.sqrt((np.sum(P * P) + P * P) / N)
    z_star = NormalDist().inv_cdf(1 - 1e-4 / (2 * r * n))
    assert np.all(np.abs(G["X"] - P) <= z_star * sigma)
    # and along P: ⟨G, P⟩/‖P‖² has mean 1 and variance 2/N (χ²₁ per sample): 5σ
    along = np.sum(G["X"] * P) / np.sum(P * P)
    assert abs(along - 1) < 5 * np.sqrt(2 / N)
    assert len(losses) == 2 * N


class _Recording(NumpyOracle):
    def losses(self, probes):
        self.seen = list(probes)
        return super().losses(probes)


@pytest.mark.parametrize("case,one_d_moves", [("zo-mopi", True), ("paper-code", True), ("zo-mopi", False)])
def test_one_d_parameters_get_zo_sgd_with_noise_restricted_to_them(case, one_d_moves):
    base = least_squares()
    oracle = _Recording(base.params, base.loss_fn, base.n_data)
    b0 = oracle.params["b"].copy()
    extra = {} if one_d_moves else {"one_d": "frozen"}
    run(case, oracle, steps=3, **extra)
    noises = [p.noise for p in oracle.seen if p.noise is not None]
    if one_d_moves:
        assert noises and all(n.names == ("b",) for n in noises)  # W is probed low-rank only
        assert oracle.params["b"].tobytes() != b0.tobytes()
    else:
        assert not noises and oracle.params["b"].tobytes() == b0.tobytes()
