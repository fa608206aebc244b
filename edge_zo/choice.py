"""Multiple choice (COPA) on a causal-LM bundle: the loss and accuracy over candidates.

A multiple-choice example becomes one row per candidate (edge_zo.data.make_choice_batch):
the prompt unscored, the candidate's tokens scored. The graph returns each row's summed
NLL (`scores`); a candidate's score is its mean token log-likelihood, −NLL / tokens, so a
long candidate is not penalised for its length (DESIGN.md section 7). Then:
  loss      = mean over examples of −log softmax over the example's candidates [right one]
  accuracy  = share of examples whose right candidate has the highest mean log-likelihood
The optimizer sees the loss through `ChoiceOracle`, which stands between it and the
runtime on live steps; the journal records the losses it returned, so a resumed run
replays them unchanged (edge_zo.resume.ReplayOracle).
"""

from __future__ import annotations

import numpy as np

from edge_zo.data import Batch, ChoiceLayout


def mean_loglik(nll: np.ndarray, loss_mask: np.ndarray) -> np.ndarray:
    """[..., rows] summed NLL -> mean token log-likelihood of each row (float64)."""
    tokens = np.maximum(loss_mask.sum(axis=1), 1.0)  # an unscored row would divide by 0
    return -np.asarray(nll, dtype=np.float64) / tokens


def _groups(layout: ChoiceLayout) -> list[slice]:
    ends = np.cumsum(layout.sizes)
    return [slice(end - size, end) for size, end in zip(layout.sizes, ends)]


def candidate_ce(loglik: np.ndarray, layout: ChoiceLayout) -> np.ndarray:
    """[P, rows] mean log-likelihoods -> [P] cross-entropy over each example's candidates."""
    loglik = np.atleast_2d(loglik)
    total = np.zeros(loglik.shape[0])
    for rows, label in zip(_groups(layout), layout.labels):
        logits = loglik[:, rows]
        total += logsumexp(logits) - logits[:, label]
    return total / len(layout.sizes)


def logsumexp(x: np.ndarray) -> np.ndarray:
    """log(sum(exp(x))) over the last axis, computed from the max (no overflow)."""
    top = x.max(axis=-1, keepdims=True)
    return top[..., 0] + np.log(np.exp(x - top).sum(axis=-1))


def correct(loglik: np.ndarray, layout: ChoiceLayout) -> int:
    """Examples whose right candidate has the highest mean log-likelihood (one probe's [rows])."""
    return sum(int(np.argmax(loglik[rows]) == label) for rows, label in zip(_groups(layout), layout.labels))


class ChoiceOracle:
    """The runtime, except that a probe's loss is the candidate cross-entropy of the bound
    multiple-choice batch, computed from the probe's per-row NLL (`Runtime.probe_scores`)."""

    def __init__(self, runtime, batch: Batch):
        self._runtime, self._batch = runtime, batch

    def __getattr__(self, name: str):
        # Everything else (set_sketch, fold, add_noise, add, shapes) is the runtime's own.
        return getattr(self._runtime, name)

    def losses(self, probes) -> np.ndarray:
        loglik = mean_loglik(self._runtime.probe_scores(probes), self._batch.loss_mask)
        return candidate_ce(loglik, self._batch.choice).astype(np.float32)


def oracle_for(runtime, batch: Batch):
    """What the optimizer queries for this batch: the runtime itself unless multiple choice."""
    return runtime if batch.choice is None else ChoiceOracle(runtime, batch)
