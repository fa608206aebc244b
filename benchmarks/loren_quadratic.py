"""LOREN vs MeZO on ill-conditioned quadratics, at matched forward passes.

LOREN's paper argues that learning the probe distribution (a rank-1 preconditioner per
block) plus RLOO weights over K probes converges faster than MeZO. Here every method
gets the same budget of forward passes on the same problems (tests/optim/problems.py
`ill_conditioned_quadratic`):

    spectrum  H = I_m ⊗ diag(d), d log-spaced over [1/cond, 1]  (a layer with unequal input scales)
    tiled     H = I + (cond − 1) v̂v̂ᵀ, v̂ = 1_m ⊗ v/√m           (one stiff direction of the form LOREN learns)

Each method's η is tuned on a log grid (tuning seeds; best geometric mean of the final
F/F₀, diverged runs count as ∞), then reported on other seeds. Rows besides the presets
are ablations that say where a gain comes from: RLOO alone (β = 0, preconditioner frozen)
and a preconditioner that does learn (the code's a-step is O(μ⁴), so at μ = 1e-3 a stays
at its random init; μ = 0.1 with η_a = 10 moves it within the budget).

    python benchmarks/loren_quadratic.py      # writes benchmarks/results/loren_quadratic.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_zo.optim import OPTIMIZERS, DivergedError, build_config  # noqa: E402
from edge_zo.rng import Key  # noqa: E402
from tests.optim.problems import ill_conditioned_quadratic  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
PROBLEMS = {  # name -> ill_conditioned_quadratic arguments
    "spectrum 16×16, cond 100": dict(m=16, n=16, cond=100.0, kind="spectrum"),
    "tiled 4×8, cond 1000": dict(m=4, n=8, cond=1000.0, kind="tiled"),
}
GRID = [float(f"{c}e{e}") for e in range(-4, 0) for c in (1, 2, 5)] + [1.0]
METHODS = {  # name -> (preset, overrides besides eta)
    "MeZO (N=1)": ("mezo", {}),
    "LOREN (code defaults)": ("loren", {}),
    "LOREN README (λ=0.1)": ("loren-readme", {}),
    "LOREN, RLOO only (β=0, η_a=0)": ("loren", {"beta": 0.0, "eta_cov": 0.0}),
    "LOREN, a learns (μ=0.1, η_a=10)": ("loren", {"mu": 0.1, "eta_cov": 10.0}),
}


def run(problem: str, method: str, eta: float, seed: int, budget: int, checkpoints: tuple[int, ...]) -> list[float]:
    """F/F₀ at each checkpoint (∞ from the divergence on); deterministic given the arguments."""
    oracle = ill_conditioned_quadratic(**PROBLEMS[problem], seed=seed)
    preset, overrides = METHODS[method]
    config = build_config(preset, {**overrides, "eta": eta})
    opt = OPTIMIZERS[config.name]
    root = Key.root(seed)
    state = opt.init(oracle.shapes, config, root.child("init"))
    L0, out = oracle.loss(), []
    try:
        while oracle.forward_passes < budget:
            state, _ = opt.step(state, oracle, root.child("step", state.step))
            while len(out) < len(checkpoints) and oracle.forward_passes >= checkpoints[len(out)]:
                out.append(oracle.loss() / L0)
    except DivergedError:
        pass
    return out + [np.inf] * (len(checkpoints) - len(out))


def geomean(x) -> float:
    x = np.asarray(x, np.float64)
    return float(np.exp(np.mean(np.log(x)))) if np.all(np.isfinite(x)) else float("inf")


def _run(args):
    return run(*args)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=int, default=4000, help="forward passes per run")
    p.add_argument("--tune-seeds", type=int, default=3)
    p.add_argument("--seeds", type=int, default=6, help="report seeds (after the tuning seeds)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="loren_quadratic.json", help="file name under benchmarks/results/")
    args = p.parse_args(argv)
    checkpoints = (args.budget // 4, args.budget // 2, args.budget)
    tune, report = range(args.tune_seeds), range(args.tune_seeds, args.tune_seeds + args.seeds)
    t0 = time.time()
    with Pool(args.workers) as pool:
        jobs = [(pr, me, eta, s, args.budget, checkpoints) for pr in PROBLEMS for me in METHODS for eta in GRID for s in tune]
        tuned = dict(zip(jobs, pool.map(_run, jobs)))
        best = {(pr, me): min(GRID, key=lambda eta: geomean([tuned[(pr, me, eta, s, args.budget, checkpoints)][-1] for s in tune]))
                for pr in PROBLEMS for me in METHODS}
        jobs = [(pr, me, best[(pr, me)], s, args.budget, checkpoints) for pr in PROBLEMS for me in METHODS for s in report]
        final = dict(zip(jobs, pool.map(_run, jobs)))
    rows = []
    for pr in PROBLEMS:
        for me in METHODS:
            per_seed = np.array([final[(pr, me, best[(pr, me)], s, args.budget, checkpoints)] for s in report])
            rows.append(dict(problem=pr, method=me, eta=best[(pr, me)], forwards=checkpoints,
                             loss_ratio=[geomean(per_seed[:, j]) for j in range(len(checkpoints))],
                             per_seed=per_seed.tolist(), seeds=list(report)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = dict(benchmark="loren_quadratic", args=vars(args), grid=GRID, seconds=round(time.time() - t0, 1), rows=rows)
    (RESULTS / args.out).write_text(json.dumps(result, indent=1))
    print_table(rows, checkpoints, args)


def print_table(rows, checkpoints, args):
    print(f"F/F₀ (geometric mean over {args.seeds} seeds; η tuned on {args.tune_seeds} others), at matched forward passes")
    print("| problem | method | η | " + " | ".join(f"{c} fwd" for c in checkpoints) + " | × MeZO |")
    print("|---|---|---|" + "---|" * (len(checkpoints) + 1))
    for r in rows:
        mezo = next(x for x in rows if x["problem"] == r["problem"] and x["method"].startswith("MeZO"))
        ratio = r["loss_ratio"][-1] / mezo["loss_ratio"][-1]
        cells = " | ".join(f"{v:.3g}" for v in r["loss_ratio"])
        print(f"| {r['problem']} | {r['method']} | {r['eta']:g} | {cells} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
