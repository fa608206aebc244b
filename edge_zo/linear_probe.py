"""The linear probe of the LP-then-ZO recipe (MeZO paper, section 3): fit a new head first.

A bundle exported with `--head linear` scores classes as s = H·f, where f = [unit(mean-
pooled sentence embedding), 1] is a graph output (`features`) and H [C, F] a dense trained
matrix. Zeroth-order steps from a random or zero-shot head waste their queries on the head;
so `finetune` first runs the training set forward once, fits H by multinomial logistic
regression in numpy (L2 strength chosen by k-fold cross-validation on the training set,
never on eval data), writes H into the runtime, and only then starts the ZO steps, which
train the body (low-rank) and H (as a dense tensor) from there.

Every piece is a pure function of the features, so a resumed run that has to redo the
probe gets the same H bit for bit.
"""

from __future__ import annotations

import time

import numpy as np

from edge_zo.data import make_batch
from edge_zo.errors import UserError

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # mean-loss L2 strengths tried by cross-validation
FOLDS = 5
NEWTON_STEPS = 50
MAX_HESSIAN_MIB = 512  # the probe must not be what breaks a job's memory budget


def dense_head(manifest) -> str | None:
    """The name of the bundle's linear head (its one dense matrix), or None."""
    dense = [m.name for m in manifest.matrices if m.dense]
    return dense[0] if len(dense) == 1 else None


def collect_features(runtime, examples, tokenizer, manifest, batch_size: int):
    """(F [N, d] float64, labels [N], forward passes): the examples through the graph once."""
    chunks, labels = [], []
    for start in range(0, len(examples), batch_size):
        batch = make_batch(examples[start:start + batch_size], tokenizer,
                           manifest.max_seq_len, manifest.pad_token_id)
        runtime.set_batch(batch.input_ids, batch.attention_mask, batch.labels, batch.loss_mask)
        chunks.append(runtime.features().astype(np.float64))
        labels.append(batch.labels)
    return np.concatenate(chunks), np.concatenate(labels), len(chunks)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def objective(H: np.ndarray, X: np.ndarray, Y: np.ndarray, penalty: np.ndarray) -> float:
    # L(H) = −(1/N) Σ_i log softmax(H x_i)[y_i] + ½ Σ penalty ⊙ H²
    logits = X @ H.T
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-(Y * logp).sum() / len(X) + 0.5 * (penalty * H * H).sum())


def fit_logistic(X: np.ndarray, y: np.ndarray, classes: int, l2: float) -> np.ndarray:
    """Multinomial logistic regression by damped Newton steps: H [classes, d] (float64).

    The last feature is the constant 1 (bias column), penalized only by a tiny 1e-8 so
    the softmax's redundant direction stays determined.
    """
    N, d = X.shape
    Y = np.eye(classes)[y]
    penalty = np.full((classes, d), l2)
    penalty[:, -1] = 1e-8
    H = np.zeros((classes, d))
    for _ in range(NEWTON_STEPS):
        P = softmax(X @ H.T)
        # ∇L = (1/N) (P − Y)ᵀ X + penalty ⊙ H
        grad = (P - Y).T @ X / N + penalty * H
        # ∇²L[c,:,e,:] = (1/N) Xᵀ diag(p_c (δ_ce − p_e)) X + diag(penalty)
        hess = np.empty((classes, d, classes, d))
        for c in range(classes):
            for e in range(classes):
                w = P[:, c] * ((c == e) - P[:, e])
                hess[c, :, e, :] = (X * w[:, None]).T @ X / N
        hess = hess.reshape(classes * d, classes * d) + np.diag(penalty.ravel())
        direction = np.linalg.solve(hess, grad.ravel()).reshape(classes, d)
        # Backtracking: the full Newton step can overshoot while the fit is still far off.
        base, step = objective(H, X, Y, penalty), 1.0
        while step > 1e-6 and objective(H - step * direction, X, Y, penalty) > base:
            step /= 2
        H = H - step * direction
        if np.abs(step * direction).max() < 1e-9:
            break
    return H


def choose_l2(X: np.ndarray, y: np.ndarray, classes: int, seed: int) -> tuple[float, float]:
    """(L2 strength, its cross-validated accuracy): k-fold CV over L2_GRID on the training set;
    ties go to the stronger penalty. Folds are a seeded permutation, so the choice is a
    function of data and seed."""
    folds = min(FOLDS, len(X))
    order = np.random.Generator(np.random.Philox(seed)).permutation(len(X))
    parts = np.array_split(order, folds)
    best = (-1.0, 0.0)
    for l2 in L2_GRID:
        right = 0
        for k in range(folds):
            train = np.concatenate([parts[j] for j in range(folds) if j != k])
            H = fit_logistic(X[train], y[train], classes, l2)
            right += int((np.argmax(X[parts[k]] @ H.T, axis=1) == y[parts[k]]).sum())
        if right / len(X) >= best[0]:
            best = (right / len(X), l2)
    return best[1], best[0]


def fit_head(runtime, examples, tokenizer, manifest, batch_size: int, seed: int) -> dict:
    """Fit the linear head on `examples` and write it into the runtime; returns the record
    the loop logs (chosen L2, CV and train accuracy, forward passes, seconds)."""
    head = dense_head(manifest)
    if head is None:
        raise UserError(f"{runtime.bundle_dir}: no linear head to fit; re-export with --head linear, "
                        "or pass linear_probe=off")
    start = time.perf_counter()
    X, y, forwards = collect_features(runtime, examples, tokenizer, manifest, batch_size)
    classes = len(manifest.label_words)
    if X.shape[1] != runtime.matrices[head].shape[1]:
        raise UserError(f"{runtime.bundle_dir}: features have {X.shape[1]} columns, {head} expects "
                        f"{runtime.matrices[head].shape[1]}; re-export the bundle")
    hessian_mib = 2 * (classes * X.shape[1]) ** 2 * 8 / 2**20  # Newton's (C·F)² float64, twice
    if hessian_mib > MAX_HESSIAN_MIB:
        raise UserError(f"a linear probe of {classes} classes x {X.shape[1]} features needs {hessian_mib:.0f} MiB "
                        f"for its Newton steps (limit {MAX_HESSIAN_MIB}); pass linear_probe=off")
    # The head as exported scores like zero-shot (label words or label embeddings); its
    # accuracy on the training set is an honest held-out estimate, since nothing was fitted.
    H0 = runtime.export_weights()[head].astype(np.float64).reshape(classes, -1)
    zero_shot_acc = float(np.mean(np.argmax(X @ H0.T, axis=1) == y))
    l2, cv_acc = choose_l2(X, y, classes, seed)
    # A fit no better held out than the unfitted head (few rows, a strong zero-shot model)
    # would throw the zero-shot knowledge away: keep the head as it was.
    kept = "fit" if cv_acc > zero_shot_acc else "zero-shot"
    H = fit_logistic(X, y, classes, l2) if kept == "fit" else H0
    runtime.load_weights({head: H.astype(runtime.matrices[head].dtype)})
    train_acc = float(np.mean(np.argmax(X @ H.T, axis=1) == y))
    return {"kind": "linear_probe", "kept": kept, "zero_shot_acc": zero_shot_acc, "l2": l2, "cv_acc": cv_acc,
            "train_acc": train_acc, "examples": len(X), "forward_passes": forwards,
            "seconds": time.perf_counter() - start}


def summary(record: dict) -> str:
    """The one line `finetune` prints after the probe."""
    if record["kept"] == "zero-shot":
        return (f"linear probe: kept the zero-shot head (train accuracy {record['zero_shot_acc']:.3f}; a fit "
                f"cross-validated {record['cv_acc']:.3f}, no better) in {record['seconds']:.1f} s")
    return (f"linear probe: train accuracy {record['train_acc']:.3f} (cross-validated {record['cv_acc']:.3f}, "
            f"l2 {record['l2']:g}; zero-shot head {record['zero_shot_acc']:.3f}) in {record['seconds']:.1f} s")
