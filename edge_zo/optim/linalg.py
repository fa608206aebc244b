"""Small dense linear algebra of the optimizers, each an equation of DESIGN.md 2.1-2.2.

All functions are pure and work on one matrix; they keep float32 in, float32 out.
"""

from __future__ import annotations

import numpy as np

from edge_zo.rng import qr_sign_fixed

# Guards the division of a zero column (M = 0 when every probe saw the same loss).
_TINY = np.float32(1e-30)


def normalize_columns(X: np.ndarray) -> np.ndarray:
    """Each column scaled to unit Euclidean norm; zero columns stay zero."""
    norms = np.linalg.norm(X, axis=0, keepdims=True)
    return X / np.maximum(norms, _TINY)


def power_sweep(M: np.ndarray, V_prev: np.ndarray) -> np.ndarray:
    """One sweep of subspace iteration towards the top-k right singular vectors of M."""
    # V = QR(Mᵀ (M V_prev))
    return qr_sign_fixed(M.T @ (M @ V_prev))


def rank_k_sign(M: np.ndarray, V_prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ZO-MOPI's rank-k approximate matrix sign of M (r×n), one power sweep a call.

    Returns (O, V): O = U Vᵀ has ‖O‖_F² = k (unit columns of U, orthonormal V), and V
    is cached by the caller for the next step's sweep.
    """
    V = power_sweep(M, V_prev)
    # U = NormalizeColumns(M V)
    U = normalize_columns(M @ V)
    # O = U Vᵀ
    return U @ V.T, V


# Newton–Schulz quintic coefficients from KellerJordan/Muon: they maximize the slope at
# zero, so small singular values grow fast; the result is U S' Vᵀ with S' in about
# [0.7, 1.2] rather than exactly U Vᵀ, which is what Muon (and ZO-Muon) use.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G: np.ndarray, steps: int = 5) -> np.ndarray:
    """Approximate orthogonalization U Vᵀ of G by the Newton–Schulz iteration."""
    a, b, c = NS_COEFFS
    # X = G / ‖G‖_F puts every singular value in (0, 1]
    X = G / max(float(np.linalg.norm(G)), 1e-30)
    wide = X.shape[0] <= X.shape[1]
    X = X if wide else X.T  # iterate on the smaller Gram matrix
    for _ in range(steps):
        # A = X Xᵀ ; B = bA + cA² ; X = aX + BX
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return (X if wide else X.T).astype(G.dtype)


def top_left_singular(M: np.ndarray, k: int) -> np.ndarray:
    """The top-k left singular vectors of M (r×k): the momentum's dominant directions."""
    U, _, _ = np.linalg.svd(M, full_matrices=False)
    return U[:, :k]
