"""Scoring a model on examples: one scorer for every task kind, whatever runs the model.

finetune (step 0 and every dev evaluation), `edge-zo eval` and `deploy --only-if-better` all
score through `score`; only the function that turns a batch into the graph's `scores`
differs (the training runtime, or a deployed model's session). Per task kind:
  classification   eval_acc  = share of rows whose highest label score is the label, and
                               eval_ce, the cross-entropy of the label scores the graph's loss
                               is (smooth where accuracy on a small held-out set moves by rows)
  multiple choice  eval_acc  = share of examples whose right candidate has the highest mean
                               token log-likelihood (edge_zo/choice.py), and eval_ce, the
                               candidate cross-entropy the optimizer minimizes
  causal-lm text   eval_loss = summed NLL of the scored tokens / their count (per token)
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

from edge_zo import choice
from edge_zo.data import Batch, make_batch


def batches(examples: list, tokenizer, manifest, size: int) -> Iterator[Batch]:
    """`size` examples per forward (a multiple-choice example expands to its candidates)."""
    for start in range(0, len(examples), size):
        yield make_batch(examples[start:start + size], tokenizer, manifest.max_seq_len, manifest.pad_token_id)


def score(batches: Iterable[Batch], scores_of: Callable[[Batch], np.ndarray], task: str) -> dict:
    """The metrics of one pass over `batches`; {} when there are none."""
    right = rows = 0
    ce = nll = tokens = 0.0
    text = False  # causal-lm text seen: report NLL per token
    for batch in batches:
        scores = scores_of(batch)
        if batch.choice is not None:
            loglik = choice.mean_loglik(scores, batch.loss_mask)
            examples = len(batch.choice.labels)
            right, rows = right + choice.correct(loglik, batch.choice), rows + examples
            ce += float(choice.candidate_ce(loglik, batch.choice)[0]) * examples
        elif task == "classification":
            right, rows = right + int(np.sum(np.argmax(scores, axis=1) == batch.labels)), rows + len(scores)
            ce += float(np.sum(label_ce(scores, batch.labels)))
        else:
            nll, tokens, text = nll + float(np.sum(scores)), tokens + float(batch.loss_mask.sum()), True
    if text:
        return {"eval_loss": nll / max(tokens, 1.0)}
    if not rows:
        return {}
    return {"eval_acc": right / rows, "eval_ce": ce / rows}


def label_ce(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[rows, C] label scores -> each row's cross-entropy, logsumexp(scores) - scores[label]
    (float64: the classification graph's loss, candidate_cross_entropy, per row)."""
    scores = np.asarray(scores, dtype=np.float64)
    return choice.logsumexp(scores) - scores[np.arange(len(scores)), labels]


def evaluate(runtime, C, examples: list, tokenizer, manifest, batch_size: int) -> dict:
    """The training runtime's current weights (+ A C when C is given) on `examples`."""
    return score(batches(examples, tokenizer, manifest, batch_size), runtime_scores(runtime, C), manifest.task)


def runtime_scores(runtime, C) -> Callable[[Batch], np.ndarray]:
    """The training runtime as `score`'s scorer: bind a batch, run it (+ A C when C is given)."""
    def scores_of(batch: Batch) -> np.ndarray:
        runtime.set_batch(batch.input_ids, batch.attention_mask, batch.labels, batch.loss_mask)
        return runtime.scores(C)

    return scores_of
