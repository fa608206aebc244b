"""The trained update as a LoRA-style adapter: `deploy --adapter` writes adapter.npz.

Per trained matrix (out x in, nn.Linear's convention, whatever layout the graph stores),
the update ΔW = W_trained − W_base is cut to the bundle's rank r by a truncated SVD:
B = U_r·S_r (out x r), A = V_rᵀ (r x in), so W_base + B·A is the best rank-r approximation
of W_trained (Eckart–Young). ZO updates folded over many steps are not exactly rank r, so
each matrix's relative Frobenius error ‖ΔW − B·A‖ / ‖ΔW‖ is recorded in
edge_zo_model.json (`adapter.matrices.NAME.rel_error`): 0 means the adapter is exact.

`apply(weights, folder)` adds the adapter back onto base weights (docs/deploy.md). numpy only.

`absorb` is the fold of a quantized bundle (export --weights): the base is frozen, so
W + A C becomes U V + A C, kept at rank R (docs/design.md "Quantized base weights").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_zo.errors import UserError

ADAPTER_FILE = "adapter.npz"


def factor(delta: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(B [out, r], A [r, in], relative Frobenius error) of the rank-`rank` truncation."""
    delta = np.asarray(delta, dtype=np.float64)
    r = min(rank, *delta.shape)
    U, S, Vt = np.linalg.svd(delta, full_matrices=False)
    B, A = U[:, :r] * S[:r], Vt[:r]
    norm = float(np.linalg.norm(S))
    error = float(np.linalg.norm(S[r:])) / norm if norm > 0 else 0.0  # ‖ΔW − BA‖_F from the tail
    return B.astype(np.float32), A.astype(np.float32), error


def absorb(U: np.ndarray, V: np.ndarray, A: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(U', V', relative error): U' V' is the best rank-R approximation (R = U's columns) of
    U V + A C, for U [m, R], V [R, n], A [m, r], C [r, n]; exact while the sum has rank <= R.

    Thin QR of both stacked factors, SVD of the small (R + r) square core: O((m + n)(R + r)^2),
    never an m x n matrix. float64 inside, deterministic (resume replays it bit for bit).
    """
    rank = U.shape[1]
    left = np.concatenate([U, A], axis=1).astype(np.float64)
    right = np.concatenate([V, C], axis=0).astype(np.float64)
    Ql, Rl = np.linalg.qr(left)
    Qr, Rr = np.linalg.qr(right.T)
    P, S, Qt = np.linalg.svd(Rl @ Rr.T)
    new_u = (Ql @ P[:, :rank]) * S[:rank]
    new_v = (Qr @ Qt[:rank].T).T
    norm = float(np.linalg.norm(S))
    error = float(np.linalg.norm(S[rank:])) / norm if norm > 0 else 0.0
    return new_u.astype(np.float32), new_v.astype(np.float32), error


def out_in(array: np.ndarray, layout: str) -> np.ndarray:
    """A stored W as out x in (GPT-2's Conv1D stores in x out)."""
    return array.T if layout == "in_out" else array


def write(folder: Path, manifest, base: dict, trained: dict, rank: int = 0) -> dict:
    """adapter.npz in `folder` at `rank` (0: the bundle's); returns edge_zo_model.json's
    `adapter` entry. Each fold adds up to r to the update's rank, so after f sketch windows
    it can need r·f to be exact: the recorded errors say how far the cut is. A quantized
    bundle's update is its U V (rank R, the default rank here); `base` need not hold it."""
    rank = rank or manifest.adapter_rank or manifest.rank  # a quantized bundle's R: exact
    if manifest.rank < 1:
        raise UserError(f"--adapter: the bundle is full-rank (rank 0), so there is no rank to cut the update "
                        "to; deploy without --adapter, or export a low-rank bundle (edge-zo export --rank R)")
    arrays, matrices = {}, {}
    for mat in manifest.matrices:
        if "U" in mat.inputs:  # a quantized base: the update is its adapter U V (out x in)
            delta = trained[mat.inputs["U"]].astype(np.float64) @ trained[mat.inputs["V"]]
        else:
            delta = out_in(np.asarray(trained[mat.name], np.float64) - np.asarray(base[mat.name], np.float64),
                           mat.layout)
        B, A, error = factor(delta, rank)
        arrays[f"{mat.name}.B"], arrays[f"{mat.name}.A"] = B, A
        matrices[mat.name] = {"shape": list(mat.shape), "layout": mat.layout, "rank": int(A.shape[0]),
                              "rel_error": error}
    np.savez(folder / ADAPTER_FILE, **arrays)
    return {"file": ADAPTER_FILE, "rank": rank, "matrices": matrices}


def load(folder: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (B, A) of a deployed folder's adapter.npz."""
    path = Path(folder) / ADAPTER_FILE
    if not path.is_file():
        raise UserError(f"{path}: missing; deploy the run with --adapter")
    with np.load(path) as data:
        names = sorted({key.rsplit(".", 1)[0] for key in data.files})
        return {name: (data[f"{name}.B"], data[f"{name}.A"]) for name in names}


def apply(weights: dict, folder: str | Path, scale: float = 1.0, layouts: dict | None = None) -> dict:
    """Base weights (name -> array, out x in unless `layouts[name]` is "in_out") plus the
    adapter in `folder`: name -> W + scale·B·A in each array's own layout and dtype.
    Matrices the adapter does not name are returned unchanged."""
    out = dict(weights)
    for name, (B, A) in load(folder).items():
        if name not in weights:
            raise UserError(f"{Path(folder) / ADAPTER_FILE}: matrix {name!r} is not among the weights given; "
                            f"pass the base model's weights by the bundle's matrix names")
        w = np.asarray(weights[name])
        layout = (layouts or {}).get(name, "out_in")
        update = out_in(scale * (B.astype(np.float64) @ A.astype(np.float64)), layout)
        out[name] = (w.astype(np.float64) + update).astype(w.dtype)
    return out
