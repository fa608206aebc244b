"""LOREN (arXiv 2511.07971): anisotropic probes from a learned rank-1 block preconditioner.

DESIGN.md 2.2, as hseung88/loren implements it (model/glue_transformer_loren.py). Per
trained tensor θ (a block) of m rows and n columns (a 1-D tensor has m = 1):

    a ∈ Rⁿ learned, tiled over the rows:  â = 1_m ⊗ a,  q = ‖â‖² = m‖a‖²,  s = √(λ + q)
    probe k = 1..K:  u_k ~ N(0, I)             regenerated from key.child("probe", k)
                     z_k = u_k − α_k â,        α_k = (√λ + s)·âᵀu_k / (q s)
                     f_k = F(θ + μ z_k)         (no baseline forward: K forwards a step)
    so Cov(z) = λ(λI + ââᵀ)⁻¹: the probes shrink along â, the block's learned stiff direction.
    RLOO:   w_k = (f_k − f̄)/(K − 1)        (Σ_k w_k = 0; w_k = (f_k − b_k)/K, b_k = mean of the others)
    θ, matrices (heavy ball, one sub-step per probe):  for k: M ← β M + (w_k/μ) z_k ;  θ ← θ − η M
    θ, 1-D (no momentum):                               θ ← θ − η Σ_k (w_k/μ) z_k
    a:  a ← a − η_a Σ_k w_k (μ²/s) Σ_rows[(âᵀu_k) u_k − â − (√λ + s)((âᵀu_k)² − q)/(q s) â]

The a step is the code's NES step. Its mean is μ²√λ·∇_a E F(θ + μz) (tests/optim/test_loren.py),
and that gradient is itself O(μ²): at the released μ = 1e-3, η_a = 1e-3, a barely leaves its
random init and LOREN acts as RLOO + heavy ball. To learn a, raise eta_cov by ~1/μ⁴.

In the runtime's terms probe k is NoiseProbe(key_k, μ, names, offset={name: −α_k a}): the
offset is added to every row of u_k, so the runtime evaluates θ + μ z_k with no new noise;
α_k is one scalar per block that the optimizer gets by regenerating u_k. Updates are
Oracle.add, one tensor at a time.

Memory (float32): the state is a (n per block) and M (m·n per matrix: full size, as the
code), see `memory_bytes`; a step also holds 2K·Σn floats (offsets and row sums of u_k) and,
while it updates one tensor, that tensor's new M and Σ_k M_k (two copies of the largest
tensor) plus one rng.BLOCK of u_k per thread (`_momentum_sum`).

Differences from the code, on purpose: a is held fixed through a step (the code rebuilds
z_k in its update loop with an a already moved by earlier probes, so that z_k is not the
one probed); no weight decay (main.py 0.01, the README run 0.0: decaying θ would need a
weight-scaling oracle call); exact restore (the oracle); a = 0 gives z = u (the code
divides by q = 0).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np

from edge_zo.optim.base import DivergedError, State, StepInfo, guard
from edge_zo.probes import NoiseProbe
from edge_zo.optim.configs import CommonConfig, opt, require
from edge_zo.optim.estimate import probe_key, select
from edge_zo.optim.schedule import eta_at
from edge_zo.rng import BLOCK, Key, add_rows, fill_block, n_blocks, noise_stream, normal, parallel


@dataclass(frozen=True)
class LorenConfig(CommonConfig):
    """LOREN with the defaults of its released main.py (hseung88/loren)."""

    name: ClassVar[str] = "loren"
    eta: float = opt(2e-3, "step size η of θ (main.py --lr)")
    mu: float = opt(1e-3, "probe scale μ (main.py --perturbation_scale)")
    K: int = opt(10, "probes a step, all perturbed, no baseline (main.py --num_queries; RLOO needs >= 2)")
    damping: float = opt(1.0, "λ of the preconditioner λI + ââᵀ (main.py --damping; the README run: 0.1)")
    eta_cov: float = opt(1e-3, "step size η_a of the preconditioner vectors a (main.py --lr_cov)")
    beta: float = opt(0.9, "heavy-ball momentum β of the matrices (the code's beta1; 1-D tensors have none)")

    def __post_init__(self):
        super().__post_init__()
        require(self.K >= 2, f"K={self.K} must be >= 2: the leave-one-out baseline needs another probe")
        require(self.damping > 0, f"damping={self.damping} must be > 0 (λI + ââᵀ must be invertible)")
        require(self.eta_cov >= 0, f"eta_cov={self.eta_cov} must be >= 0 (0 freezes the preconditioner)")
        require(0 <= self.beta < 1, f"beta={self.beta} must be in [0, 1)")


# Sources: hseung88/loren main.py argparse defaults (lr 2e-3, perturbation_scale 1e-3,
# num_queries 10, damping 1.0, lr_cov 1e-3; beta1 0.9 in glue_transformer_loren.py) and
# its README command (--lr_cov 1e-3 --damping 0.1). Anchors note section 8.
PRESETS = {"loren": {}, "loren-readme": {"damping": 0.1}}


@dataclass(frozen=True, eq=False)
class LorenState(State):
    config: LorenConfig
    step: int
    a: dict  # n per block: the learned preconditioner vector
    M: dict  # m×n per matrix: heavy-ball momentum


def init(shapes, config: LorenConfig, key: Key) -> LorenState:
    blocks = _blocks(shapes, config)
    # a ~ N(0, I_n), as the code's torch.randn
    a = {n: normal(key.child("a", n), (s[-1],)) for n, s in blocks.items()}
    M = {n: np.zeros(s, np.float32) for n, s in blocks.items() if len(s) == 2}
    return LorenState(config, 0, a, M)


def memory_bytes(shapes: Mapping[str, tuple[int, ...]], config: LorenConfig) -> int:
    """Bytes of the state kept between steps: a (n per block) + M (m·n per matrix), float32."""
    blocks = _blocks(shapes, config)
    return 4 * sum(s[-1] + (math.prod(s) if len(s) == 2 else 0) for s in blocks.values())


def _blocks(shapes, config) -> dict[str, tuple[int, ...]]:
    matrices, vectors = select(shapes, config.targets)
    return {**matrices, **vectors}


# ------------------------------------------------------------------------ the math


def rows(shape: tuple[int, ...]) -> int:
    """m: how many rows a is tiled over (1 for a 1-D tensor)."""
    return math.prod(shape[:-1])


def row_sum(u: np.ndarray) -> np.ndarray:
    """Σ_rows u (float64, length n): âᵀu = aᵀ Σ_rows u."""
    return u.reshape(-1, u.shape[-1]).sum(axis=0, dtype=np.float64)


def geometry(a: np.ndarray, m: int, damping: float) -> tuple[float, float]:
    """(q, s) of a block."""
    # q = ‖â‖² = m‖a‖²
    q = m * float(np.dot(a, a.astype(np.float64)))
    # s = √(λ + q)
    return q, math.sqrt(damping + q)


def shrink(dot: float, q: float, s: float, damping: float) -> float:
    """α of one probe; z = u − α â has covariance λ(λI + ââᵀ)⁻¹."""
    if q == 0:
        return 0.0  # a = 0: Σ = I, z = u
    # α = (√λ + s)·âᵀu / (q s)
    return (math.sqrt(damping) + s) * dot / (q * s)


def probe_offset(a: np.ndarray, alpha: float) -> np.ndarray:
    """The row added to every row of u: z = u + (−α a) = u − α â."""
    return np.float32(-alpha) * a


def loo_weights(losses: np.ndarray) -> np.ndarray:
    """REINFORCE leave-one-out weights (float64); they sum to zero."""
    f = losses.astype(np.float64)
    # w_k = (f_k − f̄)/(K − 1) = (f_k − mean_{j≠k} f_j)/K
    return (f - f.mean()) / (len(f) - 1)


def precond_term(a, u_rows, dot, w_k, mu, m, q, s, damping) -> np.ndarray:
    """Probe k's term of the preconditioner step (float64, length n); the step is −η_a Σ_k."""
    if q == 0:
        return np.zeros(a.shape, np.float64)  # a = 0 is a stationary point of the step
    a64 = a.astype(np.float64)
    # Σ_rows[(âᵀu) u − â − (√λ+s)((âᵀu)² − q)/(q s) â] = (âᵀu) Σ_rows u − m a − m (√λ+s)((âᵀu)² − q)/(q s) a
    c = dot * u_rows - m * a64 - m * (math.sqrt(damping) + s) * (dot * dot - q) / (q * s) * a64
    # w_k μ² c / s
    return w_k * mu * mu / s * c


# ------------------------------------------------------------------------ the step


def _probe_geometry(state: LorenState, blocks, keys) -> dict[str, tuple]:
    """Per block (m, q, s, α_k, âᵀu_k, Σ_rows u_k for k = 1..K), regenerating u_k piece by
    piece (the row sums are kept, n floats per probe, so the update need not sum again)."""
    sums = {n: [] for n in blocks}
    for key_k in keys:
        for n, r in _row_sums(key_k, blocks).items():
            sums[n].append(r)
    out = {}
    for n, shape in blocks.items():
        a, m = state.a[n], rows(shape)
        q, s = geometry(a, m, state.config.damping)
        dots = [float(np.dot(a, r)) for r in sums[n]]
        out[n] = (m, q, s, [shrink(d, q, s, state.config.damping) for d in dots], dots, sums[n])
    return out


def _row_sums(key_k: Key, blocks) -> dict[str, np.ndarray]:
    """Σ_rows u_k (float64, length n) of every block: the pieces of all tensors on all cores,
    each piece's partial sums added in piece order (the same whatever the thread count)."""
    tasks = [(n, b) for n, shape in blocks.items() for b in range(n_blocks(math.prod(shape)))]
    parts = {}

    def piece(task):
        n, b = task
        size, cols = math.prod(blocks[n]), blocks[n][-1]
        lo, hi = b * BLOCK, min((b + 1) * BLOCK, size)
        z = _piece_scratch(hi - lo)
        fill_block(noise_stream(key_k, n), b, z)
        parts[task] = _partial_row_sum(z, lo, cols)

    parallel(piece, tasks)
    return {n: np.sum([parts[t] for t in tasks if t[0] == n], axis=0) for n in blocks}


def _partial_row_sum(z: np.ndarray, start: int, n: int) -> np.ndarray:
    """Σ over rows of the flat elements [start, start + len(z)) of a tensor with rows of n."""
    out, c = np.zeros(n, np.float64), start % n
    head = min((n - c) % n, z.size)  # the rest of the row the piece starts inside
    out[c:c + head] += z[:head]
    rows_in = (z.size - head) // n
    out += z[head:head + rows_in * n].reshape(rows_in, n).sum(axis=0, dtype=np.float64)
    rest = z.size - head - rows_in * n
    out[:rest] += z[z.size - rest:]
    return out


def _update_block(n, shape, a, M, keys, geo, w, cfg: LorenConfig):
    """One block's K sub-steps -> (Σ_k M_k, M after them or None, new a)."""
    m, q, s, alphas, dots, sums = geo
    grad_a = np.zeros(a.shape, np.float64)
    for k in range(len(keys)):
        grad_a += precond_term(a, sums[k], dots[k], w[k], cfg.mu, m, q, s, cfg.damping)
    delta, M = _momentum_sum(n, shape, a, M, keys, alphas, w, cfg)
    # a ← a − η_a Σ_k (term_k)
    return delta, M, (a - cfg.eta_cov * grad_a).astype(np.float32)


def _momentum_sum(n, shape, a, M, keys, alphas, w, cfg: LorenConfig):
    """(Σ_k M_k, M_K) of the K heavy-ball sub-steps (M None: 1-D, Σ_k g_k and None).

    Piece by piece (rng.BLOCK elements of the flat tensor, on all cores): each piece of
    u_k is drawn where its pieces of M and of the sum sit in cache, instead of K sweeps
    over whole-tensor temporaries. Per element the float32 operations are the ones of
    the released code's heavy ball on z_k = u_k + offset_k: g = (w_k/μ) z_k;  M ← β M + g;
    Σ ← Σ + M (1-D tensors keep no M: Σ ← Σ + g).
    """
    size = math.prod(shape)
    delta = np.zeros(size, np.float32)
    M_new = None if M is None else np.array(M, np.float32).reshape(-1)
    streams = [noise_stream(key_k, n) for key_k in keys]
    offsets = [probe_offset(a, alpha) for alpha in alphas]

    def piece(b):
        lo, hi = b * BLOCK, min((b + 1) * BLOCK, size)
        z, out, acc = _piece_scratch(hi - lo), delta[lo:hi], None if M_new is None else M_new[lo:hi]
        for k, stream in enumerate(streams):
            fill_block(stream, b, z)
            add_rows(z, offsets[k], lo)  # z_k = u_k − α_k â (the same float32 operations as the probe)
            np.multiply(z, np.float32(w[k] / cfg.mu), out=z)  # g_k = (w_k/μ) z_k
            if acc is not None:  # M ← β M + g_k
                np.multiply(acc, np.float32(cfg.beta), out=acc)
                np.add(acc, z, out=acc)
            np.add(out, z if acc is None else acc, out=out)  # Σ ← Σ + M_k

    parallel(piece, range(n_blocks(size)))
    return delta.reshape(shape), None if M_new is None else M_new.reshape(shape)


_local = threading.local()


def _piece_scratch(size: int) -> np.ndarray:
    """This thread's float32 block for u_k (rng.BLOCK elements, reused)."""
    if getattr(_local, "z", None) is None:
        _local.z = np.empty(BLOCK, np.float32)
    return _local.z[:size]


def step(state: LorenState, oracle, key: Key) -> tuple[LorenState, StepInfo]:
    cfg, t = state.config, state.step
    blocks = _blocks(oracle.shapes, cfg)
    keys = [probe_key(key, k) for k in range(cfg.K)]
    geo = _probe_geometry(state, blocks, keys)
    # θ + μ z_k = θ + μ(u_k + offset_k)
    probes = [
        NoiseProbe(keys[k], cfg.mu, tuple(blocks), {n: probe_offset(state.a[n], geo[n][3][k]) for n in blocks})
        for k in range(cfg.K)
    ]
    losses = np.asarray(oracle.losses(probes), dtype=np.float32)
    if losses.shape != (cfg.K,):
        raise ValueError(f"oracle returned {losses.shape} losses for {cfg.K} probes")
    w = loo_weights(losses)
    # g_k = (f_k − b_k)/μ = K w_k/μ: the projected gradients (1/K) Σ g_k z_k is the estimate
    g = cfg.K * w / cfg.mu
    loss0 = guard(losses, g, state)
    eta = eta_at(cfg, t)
    a, M = {}, {}
    for n, shape in blocks.items():
        delta, M_n, a[n] = _update_block(n, shape, state.a[n], state.M.get(n), keys, geo[n], w, cfg)
        if len(shape) == 2:
            M[n] = M_n
        if not (np.all(np.isfinite(delta)) and np.all(np.isfinite(a[n]))):
            raise DivergedError(f"step {t}: the update or the preconditioner of {n} is not finite; the run diverged. "
                                "Lower eta (or eta_cov).")
        # θ ← θ − η Σ_k M_k   (the K heavy-ball sub-steps)
        oracle.add({n: np.float32(-eta) * delta})
    new = dataclasses.replace(state, step=t + 1, a=a, M=M, loss0=loss0)
    return new, StepInfo(t, len(losses), losses, g, key, eta)
