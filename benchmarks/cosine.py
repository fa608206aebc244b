"""Cosine between each method's update direction and the true gradient, at matched forwards.

The mechanism ZO-MOPI rests on: a zeroth-order estimate G of the gradient inside the
sketch is the projected gradient plus a lot of isotropic noise. Full orthogonalization
(ZO-Muon's Newton–Schulz) gives every direction of G, noise included, the same weight;
a rank-k power-iteration sign (ZO-MOPI, k < r) keeps the k directions the iteration has
locked onto across steps (V is cached, one sweep a step) and drops the rest, so when the
true gradient is dominated by a few directions its update points closer to it.

Setup: F(X) = ½‖X − X*‖²_F on one m×n matrix, evaluated at a fixed point whose gradient
∇F = X − X* has singular values σ_j (rank-4 dominant, 1/j, and flat for contrast).
Every method sees the same probes (forward estimator, N directions + 1 baseline a step,
the same sketch A), so forward passes are matched exactly; only what each does with G
differs. Reported: mean over seeds of cos(A·O_t, ∇F) and of cos(A·O_t, A Aᵀ∇F) (the
best any update inside the sketch can do) after t steps.

    python benchmarks/cosine.py            # writes benchmarks/results/cosine.json
    python benchmarks/cosine.py --m 64 --n 32 --r 16 --k 4 --out cosine-small.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edge_zo.optim.estimate import draw_B, projected_grads, sketch_probes, subspace_gradient
from edge_zo.optim.linalg import newton_schulz, rank_k_sign
from edge_zo.rng import Key, orthonormal

RESULTS = Path(__file__).parent / "results"
# Singular values σ_j of the true gradient, j = 1..n
SPECTRA = {
    "rank-4": lambda j: np.where(j <= 4, 1.0, 0.02),  # a few dominant directions
    "decaying": lambda j: 1.0 / j,
    "flat": lambda j: np.ones(len(j)),  # no structure: truncation can only lose
}


def make_problem(m, n, spectrum, seed):
    """Gradient ∇F = P diag(σ) Qᵀ with Haar P, Q; returns (∇F, loss of X + A D)."""
    key = Key.root(seed)
    j = np.arange(1, n + 1)
    sigma = SPECTRA[spectrum](j)
    grad = (orthonormal(key.child("P"), m, n).astype(np.float64) * sigma) @ orthonormal(key.child("Q"), n, n).T

    def loss(A64, D):
        # F(X + A D) with X − X* = ∇F, in float64: this measures the estimator, not fp32
        R = grad + A64 @ D
        return 0.5 * float(np.sum(R * R))

    return grad, loss


def cos(a, b):
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def run_seed(m, n, r, k, N, mu, beta, steps, spectrum, seed, checkpoints):
    grad, loss = make_problem(m, n, spectrum, seed)
    key = Key.root(1000 + seed)
    A = orthonormal(key.child("sketch"), m, r)
    A64 = A.astype(np.float64)
    proj = A64 @ (A64.T @ grad)  # A Aᵀ∇F
    C = {"X": np.zeros((r, n), np.float32)}
    V0 = orthonormal(key.child("V"), n, k)
    V = {"plain": V0, "momentum": V0}
    M = np.zeros((r, n), np.float32)
    out = {}
    for t in range(1, steps + 1):
        step_key = key.child("step", t)
        B = draw_B(step_key, N, {"X": (r, n)})
        probes = sketch_probes(0, C, B, mu, "forward", step_key, {})
        losses = np.array([loss(A64, p.D["X"]) for p in probes])
        G = subspace_gradient(projected_grads(losses, "forward", N, mu), B)["X"]
        # M = β M + (1 − β) G
        M = beta * M + (1 - beta) * G
        O_plain, V["plain"] = rank_k_sign(G, V["plain"])
        O_mom, V["momentum"] = rank_k_sign(M, V["momentum"])
        directions = {
            "raw subspace gradient A·G": G,
            f"raw momentum A·M (β={beta})": M,
            "ZO-Muon A·NS5(G)": newton_schulz(G),
            f"ZO-MOPI k={k}, β=0 (paper-code)": O_plain,
            f"ZO-MOPI k={k}, β={beta}": O_mom,
        }
        if t in checkpoints:
            for name, O in directions.items():
                D = A64 @ O.astype(np.float64)
                out[(name, t)] = (cos(D, grad), cos(D, proj))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--m", type=int, default=256)
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--r", type=int, default=64)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--N", type=int, default=8)
    # μ small enough that the forward difference's curvature term μ‖B‖²/2 (H = I here)
    # stays below the signal ⟨Aᵀ∇F, B⟩; real losses are far flatter than this quadratic.
    p.add_argument("--mu", type=float, default=1e-5)
    p.add_argument("--beta", type=float, default=0.9)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", default="cosine.json", help="file name under benchmarks/results/")
    args = p.parse_args(argv)
    checkpoints = [1, 5, 20, args.steps]
    t0 = time.time()
    rows = []
    for spectrum in SPECTRA:
        per_seed = [
            run_seed(args.m, args.n, args.r, args.k, args.N, args.mu, args.beta, args.steps, spectrum, s, checkpoints)
            for s in range(args.seeds)
        ]
        for name, t in per_seed[0]:
            vals = np.array([ps[(name, t)] for ps in per_seed])
            rows.append(dict(spectrum=spectrum, method=name, steps=t, forwards=t * (args.N + 1),
                             cos_grad=float(vals[:, 0].mean()), cos_grad_sd=float(vals[:, 0].std()),
                             cos_projected=float(vals[:, 1].mean())))
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = dict(benchmark="cosine", args=vars(args), seconds=round(time.time() - t0, 1), rows=rows)
    (RESULTS / args.out).write_text(json.dumps(result, indent=1))
    print_table(rows, checkpoints, args)


def print_table(rows, checkpoints, args):
    print(f"cos(update, ∇F) [cos with A Aᵀ∇F in brackets]; m×n={args.m}×{args.n}, r={args.r}, "
          f"N={args.N} forward probes (+1 baseline), mean of {args.seeds} seeds")
    for spectrum in SPECTRA:
        print(f"\n{spectrum} gradient spectrum")
        print("| method | " + " | ".join(f"{t * (args.N + 1)} fwd" for t in checkpoints) + " |")
        print("|---|" + "---|" * len(checkpoints))
        for name in dict.fromkeys(r["method"] for r in rows):
            cells = [next(r for r in rows if r["spectrum"] == spectrum and r["method"] == name and r["steps"] == t)
                     for t in checkpoints]
            print(f"| {name} | " + " | ".join(f"{c['cos_grad']:.3f} [{c['cos_projected']:.2f}]" for c in cells) + " |")


if __name__ == "__main__":
    main()
