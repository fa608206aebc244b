"""Cosine between each method's update and the gradient at its own moving iterate, at matched forwards.

The mechanism ZO-MOPI rests on: a zeroth-order estimate G of the gradient inside the
sketch is the projected gradient plus a lot of isotropic noise. Full orthogonalization
(ZO-Muon's Newton–Schulz) gives every direction of G, noise included, the same weight;
a rank-k power-iteration sign (ZO-MOPI) keeps the k directions the iteration has locked
onto across steps (V is cached, one sweep a step) and drops the rest.

Setup: F(X) = ½‖X − X*‖²_F on one m×n matrix; X_0 − X* = P diag(σ) Qᵀ (Haar P, Q) with
singular values σ_j (rank-4 dominant, 1/j, and flat for contrast). Every method runs its
OWN iterate X_t = X_0 + A C_t, X_{t+1} = X_t − η_t A O_t, so ∇F(X_t) = X_t − X* moves. All
share the sketch A, the start, and each step's probe directions B_i (forward estimator,
N directions + 1 baseline, evaluated at the method's own X_t): forwards are matched
exactly. Reported after t steps, mean over seeds: cos(A·O_t, ∇F(X_t)), cos(A·O_t, A Aᵀ∇F(X_t))
(the best an update inside the sketch can do) and F(X_t)/F(X_0). F can fall no lower than
the part of X_0 − X* outside the sketch ("floor"); ‖a_t‖²/‖a_0‖², a_t = Aᵀ∇F(X_t), is the
part inside it. η: each method gets the η of a log grid with the lowest mean final F on
separate tuning seeds (a diverged run counts as infinite), decayed by a cosine over the run
(--schedule; orthogonalized steps have norm ~η√k whatever the size of ∇F).

    python benchmarks/cosine.py            # writes benchmarks/results/cosine.json
    python benchmarks/cosine.py --m 64 --n 32 --r 16 --k 4 --out cosine-small.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from edge_zo.optim.estimate import draw_B, projected_grads, subspace_gradient
from edge_zo.optim.linalg import newton_schulz, rank_k_sign
from edge_zo.optim.zo_mopi import PRESETS, ZoMopiConfig
from edge_zo.rng import Key, orthonormal

RESULTS = Path(__file__).parent / "results"
# Singular values σ_j of ∇F(X_0) = X_0 − X*, j = 1..n
SPECTRA = {
    "rank-4": lambda j: np.where(j <= 4, 1.0, 0.02),  # a few dominant directions
    "decaying": lambda j: 1.0 / j,
    "flat": lambda j: np.ones(len(j)),  # no structure: truncation can only lose
}
DIVERGED = 1e3  # F(X_t)/F(X_0) above this: the run has diverged and stops


def method_specs(k, beta, r, n):
    """Row name -> (kind, k, β). ZO-MOPI rows take the presets' k (32) unless --k, clamped to min(k, r, n)."""
    pc = PRESETS["paper-code"]
    k_pc = min(k or pc["k"], r, n)
    k_zm = min(k or ZoMopiConfig.k, r, n)
    return {
        "raw subspace gradient A·G": ("raw", 0, 0.0),
        f"raw momentum A·M (β={beta:g})": ("raw", 0, beta),
        "ZO-Muon A·NS5(G)": ("ns5", 0, 0.0),
        f"ZO-MOPI k={k_pc}, β={pc['beta']:g} (paper-code)": ("sign", k_pc, pc["beta"]),
        f"ZO-MOPI k={k_zm}, β={beta:g} (zo-mopi)": ("sign", k_zm, beta),
    }


def make_problem(m, n, r, spectrum, seed):
    """In-sketch start a_0 = Aᵀ(X_0 − X*) (r×n) and ½‖(I − A Aᵀ)(X_0 − X*)‖², the floor of F."""
    key = Key.root(seed)
    sigma = SPECTRA[spectrum](np.arange(1, n + 1))
    P = orthonormal(key.child("P"), m, n).astype(np.float64)
    delta0 = (P * sigma) @ orthonormal(key.child("Q"), n, n).T.astype(np.float64)
    A64 = orthonormal(Key.root(1000 + seed).child("sketch"), m, r).astype(np.float64)
    a0 = A64.T @ delta0
    # ½‖(I − A Aᵀ)Δ_0‖² = ½(‖Δ_0‖² − ‖Aᵀ Δ_0‖²) for orthonormal A
    floor = 0.5 * (float(np.sum(delta0 ** 2)) - float(np.sum(a0 ** 2)))
    return a0, floor


def losses_at(a, floor, Bs, mu):
    """Forward-estimator losses at X_t = X_0 + A C_t (a = a_0 + C_t): baseline, then X_t + μ A B_i."""
    # F(X + μ A B) = ½‖(I − A Aᵀ)Δ_0‖² + ½‖a + μ B‖²   (exact: A orthonormal, X − X* = Δ_0 + A C)
    shifted = 0.5 * np.sum((a[None] + mu * Bs) ** 2, axis=(1, 2)) + floor
    return np.concatenate([[0.5 * float(np.sum(a * a)) + floor], shifted])


def direction(kind, beta, G, st):
    """O_t of one method from its G; updates its momentum M and power-iteration V in st."""
    # M = β M + (1 − β) G
    st["M"] = beta * st["M"] + (1.0 - beta) * G
    if kind == "raw":
        return st["M"]
    if kind == "ns5":
        return newton_schulz(st["M"])
    O, st["V"] = rank_k_sign(st["M"], st["V"])
    return O


def cosines(O, a, floor):
    """(cos(A O, ∇F), cos(A O, A Aᵀ∇F)) at X_t, with ∇F = Δ_0 + A C and a = Aᵀ∇F."""
    O = O.astype(np.float64)
    dot, nO, na2 = float(np.sum(O * a)), float(np.linalg.norm(O)), float(np.sum(a * a))
    # ‖∇F‖² = ‖(I − A Aᵀ)Δ_0‖² + ‖a‖² = 2·floor + ‖a‖²
    return dot / (nO * math.sqrt(2 * floor + na2)), dot / (nO * math.sqrt(na2))


def eta_at(eta, t, steps, schedule):
    """η_t for step t = 1..steps."""
    if schedule == "constant":
        return eta
    # η_t = η·½(1 + cos(π (t − 1)/steps))
    return eta * 0.5 * (1.0 + math.cos(math.pi * (t - 1) / steps))


def run_seed(args, specs, etas, spectrum, seed, checkpoints):
    """Every (method, η) from the same X_0 with shared probes -> {(name, η, t): (cos, cos_proj, F/F0, in-sketch)}."""
    m, n, r, N, mu = args.m, args.n, args.r, args.N, args.mu
    a0, floor = make_problem(m, n, r, spectrum, seed)
    F0 = 0.5 * float(np.sum(a0 * a0)) + floor
    key = Key.root(1000 + seed)
    V0 = {k: orthonormal(key.child("V", k), n, k) for _, k, _ in specs.values() if k}
    runs = {(name, eta): dict(C=np.zeros((r, n)), M=np.zeros((r, n), np.float32), V=V0.get(spec[1]), alive=True)
            for name, spec in specs.items() for eta in etas}
    out = {}
    for t in range(1, args.steps + 1):
        step_key = key.child("step", t)
        B = draw_B(step_key, N, {"X": (r, n)})
        Bs = np.stack([b["X"] for b in B]).astype(np.float64)
        for (name, eta), st in runs.items():
            if not st["alive"]:
                out[(name, eta, t)] = (math.nan, math.nan, math.inf, math.inf)
                continue
            kind, _, beta = specs[name]
            a = a0 + st["C"]
            g = projected_grads(losses_at(a, floor, Bs, mu), "forward", N, mu)
            O = direction(kind, beta, subspace_gradient(g, B)["X"], st)
            c = cosines(O, a, floor) if t in checkpoints else (math.nan, math.nan)
            # X_{t+1} = X_t − η_t A O_t   (C ← C − η_t O_t)
            st["C"] = st["C"] - eta_at(eta, t, args.steps, args.schedule) * O.astype(np.float64)
            a = a0 + st["C"]
            # F(X_t)/F(X_0), and the part inside the sketch ‖a_t‖²/‖a_0‖²
            ratio, inside = (0.5 * float(np.sum(a * a)) + floor) / F0, float(np.sum(a * a) / np.sum(a0 * a0))
            st["alive"] = bool(np.isfinite(ratio) and ratio < DIVERGED)
            out[(name, eta, t)] = (*c, ratio, inside) if st["alive"] else (*c, math.inf, math.inf)
    out["floor"] = floor / F0
    return out


def run_spectrum(args, specs, etas, spectrum, checkpoints):
    """Tune η per method on tuning seeds, then report the chosen η on the evaluation seeds."""
    run = lambda s: run_seed(args, specs, etas, spectrum, s, checkpoints)  # noqa: E731
    tune = [run(s) for s in range(args.seeds, args.seeds + args.tune_seeds)]
    evals = [run(s) for s in range(args.seeds)]
    grid, rows = {}, []
    for name in specs:
        final = {eta: float(np.mean([ts[(name, eta, args.steps)][2] for ts in tune])) for eta in etas}
        grid[name] = {f"{eta:.3g}": v for eta, v in final.items()}
        best = min(etas, key=lambda e: final[e])
        for t in checkpoints:
            vals = np.array([es[(name, best, t)] for es in evals])
            rows.append(dict(spectrum=spectrum, method=name, eta=float(best), steps=t, forwards=t * (args.N + 1),
                             cos_grad=float(vals[:, 0].mean()), cos_grad_sd=float(vals[:, 0].std()),
                             cos_projected=float(vals[:, 1].mean()), loss_ratio=float(vals[:, 2].mean()),
                             loss_ratio_sd=float(vals[:, 2].std()), sketch_loss_ratio=float(vals[:, 3].mean())))
    return rows, grid, float(np.mean([es["floor"] for es in evals]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--m", type=int, default=256)
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--r", type=int, default=64)
    p.add_argument("--k", type=int, default=None,
                   help="rank k of both ZO-MOPI rows (default: the presets' 32); clamped to min(k, r, n)")
    p.add_argument("--N", type=int, default=PRESETS["paper-code"]["N"])
    # μ small enough that the forward difference's curvature term μ‖B‖²/2 (H = I here)
    # stays below the signal ⟨Aᵀ∇F, B⟩; real losses are far flatter than this quadratic.
    p.add_argument("--mu", type=float, default=1e-5)
    p.add_argument("--beta", type=float, default=ZoMopiConfig.beta, help="β of raw momentum and the zo-mopi row")
    p.add_argument("--steps", type=int, default=500, help="500: long enough for every iterate to move")
    p.add_argument("--seeds", type=int, default=5, help="evaluation seeds 0..seeds−1")
    p.add_argument("--tune-seeds", type=int, default=2, help="seeds after those, used only to pick η")
    p.add_argument("--etas", type=float, nargs="+", default=list(10 ** np.linspace(-4, 0, 13)), help="η grid")
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    p.add_argument("--out", default="cosine.json", help="file name under benchmarks/results/ (or a path)")
    args = p.parse_args(argv)
    specs = method_specs(args.k, args.beta, args.r, args.n)
    checkpoints = sorted({c for c in (1, 5, 20, 100, args.steps) if c <= args.steps})
    t0 = time.time()
    rows, grids, floors = [], {}, {}
    for spectrum in SPECTRA:
        r, grids[spectrum], floors[spectrum] = run_spectrum(args, specs, args.etas, spectrum, checkpoints)
        rows += r
    result = dict(benchmark="cosine", args=vars(args), seconds=round(time.time() - t0, 1),
                  methods={name: dict(kind=s[0], k=s[1], beta=s[2]) for name, s in specs.items()},
                  floor=floors, eta_grid_tune_final_loss_ratio=grids, rows=rows)
    path = RESULTS / args.out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print_table(rows, checkpoints, floors, args)
    print(f"wrote {path}")
    return result


def print_table(rows, checkpoints, floors, args):
    print(f"cos(A·O_t, ∇F(X_t)) [cos with A Aᵀ∇F(X_t)], F(X_t)/F(X_0) and its in-sketch part ‖a_t‖²/‖a_0‖² "
          f"after t steps; m×n={args.m}×{args.n}, "
          f"r={args.r}, N={args.N} forward probes (+1 baseline) at each method's own iterate, mean of {args.seeds} "
          f"seeds; η per method from the grid by mean final F on {args.tune_seeds} tuning seeds, {args.schedule} decay")
    for spectrum in SPECTRA:
        print(f"\n{spectrum} spectrum of ∇F(X_0); floor of F/F0 (outside the sketch) = {floors[spectrum]:.3f}")
        print("| method | η | " + " | ".join(f"{t * (args.N + 1)} fwd" for t in checkpoints) + " |")
        print("|---|---|" + "---|" * len(checkpoints))
        for name in dict.fromkeys(r["method"] for r in rows):
            cells = [next(r for r in rows if r["spectrum"] == spectrum and r["method"] == name and r["steps"] == t)
                     for t in checkpoints]
            print(f"| {name} | {cells[0]['eta']:.2g} | " + " | ".join(
                f"{c['cos_grad']:.3f} [{c['cos_projected']:.2f}] F {c['loss_ratio']:.3f}/{c['sketch_loss_ratio']:.2f}"
                for c in cells) + " |")


if __name__ == "__main__":
    main()
