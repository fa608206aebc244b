"""Loss and scores of the training graph, computed only where the loss needs logits.

Five heads (docs/export.md, "Scores"):
- `classifier`: a sequence-classification model; scores = the head's logits [P, B, C].
- `label-words`: a causal LM scoring label words; the last non-pad hidden state times the
  label tokens' rows of the LM head, [P, B, C]. Cross-entropy over candidates does not
  depend on the log-softmax constant, so the vocabulary-wide logits are never formed.
- `label-embedding`: a sentence-embedding encoder (MiniLM) scoring label words zero-shot:
  scale * cos(mean-pooled last hidden state, e_c), where e_c is label word c's own pooled
  embedding, computed by the same model at export time and stored as a constant.
- `linear`: the same features made trainable for the LP-then-ZO recipe: scores =
  [unit(mean-pooled last hidden state), 1] · Hᵀ with H [C, hidden + 1] a dense trained
  matrix (`linear_head.weight`, bias in its last column), initialised to
  [scale · e_c, 0] so that it scores exactly like `label-embedding` before it is fitted.
  The graph also outputs the features [P, B, hidden + 1] the linear probe is fitted on.
  On a language model (`last_token`) the features are [unit(last non-pad hidden state), 1]
  and e_c are the label words' LM-head rows, all scaled by one constant: before it is
  fitted it ranks the labels exactly as `label-words` does (same argmax, zero-shot).
- `causal-lm`: mean NLL of the tokens where loss_mask is 1, each predicted from the
  position before it; logits only at those positions (NonZero + Gather). With a logit
  bias (`add_logit_bias`, export --logit-bias) the logits are z + b, and the graph also
  outputs token_probs [P, V], the sum of softmax(z + b) over the scored tokens: with the
  scored tokens' counts (known from the batch) it is the loss's exact gradient in b.
The token batch is tiled P times (probe-major) so probe p runs with D[p] (lowrank.py).
"""

from __future__ import annotations

import torch
from torch import nn

from edge_zo_export.lowrank import probe_slots

HEADS = ("classifier", "label-words", "label-embedding", "linear", "causal-lm")
LINEAR_HEAD = "linear_head"  # the dense head module the linear head adds to the encoder
LOGIT_BIAS = "logit_bias"  # the [1, V] parameter add_logit_bias gives a causal LM
# sentence-transformers' MultipleNegativesRankingLoss multiplies cosine similarities by 20
# (its `scale` default) before cross-entropy, the objective all-MiniLM-L6-v2 was trained
# with: cosines in [-1, 1] would otherwise make a nearly flat softmax over the labels.
EMBEDDING_SCALE = 20.0


class TrainingGraph(nn.Module):
    """(input_ids, attention_mask, labels | loss_mask) -> (loss [P], scores)."""

    def __init__(self, model: nn.Module, head: str, trained_modules: list[str],
                 label_token_ids: list[int] | None = None,
                 label_embeddings: torch.Tensor | None = None, last_token: bool = False):
        super().__init__()
        self.last_token = last_token  # linear head: a language model's last token, not a mean
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}")
        if head == "label-embedding" and label_embeddings is None:
            raise ValueError("the label-embedding head needs label_embeddings [C, H]")
        if head == "linear" and not hasattr(model, LINEAR_HEAD):
            raise ValueError(f"the linear head needs model.{LINEAR_HEAD} (add_linear_head)")
        self.model, self.head, self.trained_modules = model, head, list(trained_modules)
        ids = torch.tensor(label_token_ids or [], dtype=torch.long)
        self.register_buffer("label_token_ids", ids, persistent=False)
        # A constant of the graph (unit rows, fp32), not a trained or lifted tensor.
        self.register_buffer("label_embeddings", label_embeddings, persistent=False)

    @property
    def outputs(self) -> list[str]:
        if self.head == "linear":
            return ["loss", "scores", "features"]
        return ["loss", "scores", "token_probs"] if self._logit_bias() is not None else ["loss", "scores"]

    def _logit_bias(self):
        return getattr(self.model, LOGIT_BIAS, None) if self.head == "causal-lm" else None

    def forward(self, input_ids, attention_mask, target):
        probes = probe_slots(self.model, self.trained_modules)
        ids, mask = input_ids.repeat(probes, 1), attention_mask.repeat(probes, 1)
        if self.head == "causal-lm":
            return self._causal_lm(ids, mask, input_ids, target, probes)
        if self.head == "classifier":
            logits = self.model(input_ids=ids, attention_mask=mask).logits
        elif self.head == "label-embedding":
            pooled = unit(mean_pool(self._hidden(ids, mask), mask))
            logits = EMBEDDING_SCALE * pooled @ self.label_embeddings.t()
        elif self.head == "linear":
            hidden = self._hidden(ids, mask)
            features = last_token_features(hidden, mask) if self.last_token else linear_features(hidden, mask)
            scores = getattr(self.model, LINEAR_HEAD)(features).reshape(probes, input_ids.shape[0], -1)
            return (candidate_cross_entropy(scores, target), scores,
                    features.reshape(probes, input_ids.shape[0], -1))
        else:
            logits = self._label_word_logits(ids, mask)
        scores = logits.float().reshape(probes, input_ids.shape[0], -1)
        return candidate_cross_entropy(scores, target), scores

    def _hidden(self, ids, mask):
        return self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state

    def _label_word_logits(self, ids, mask):
        h_last = last_hidden(self._hidden(ids, mask), mask)
        head = self.model.get_output_embeddings()
        logits = h_last @ head.weight[self.label_token_ids].t()
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[self.label_token_ids]
        return logits

    def _causal_lm(self, ids, mask, input_ids, loss_mask, probes):
        batch, length = input_ids.shape
        hidden = self._hidden(ids, mask)[:, :-1]  # position t-1 predicts token t
        scored = loss_mask[:, 1:].reshape(-1) > 0
        where = torch.nonzero(scored).squeeze(1)  # [K] flat (row, position) indices
        picked = hidden.reshape(probes, batch * (length - 1), -1).index_select(1, where)
        bias = self._logit_bias()
        logits = self._lm_logits(picked, bias).float()  # [P, K, V]
        targets = input_ids[:, 1:].reshape(-1).index_select(0, where)
        index = targets[None, :, None].expand(probes, -1, 1)
        if bias is None:
            nll = -torch.log_softmax(logits, dim=-1).gather(2, index).squeeze(2)
        else:  # one [P, K, V] tensor serves both: the NLL reads K entries of it, token_probs sums it
            probs = torch.softmax(logits, dim=-1)
            nll = -torch.log(probs.gather(2, index).squeeze(2).clamp_min(torch.finfo(torch.float32).tiny))
        rows = torch.div(where, length - 1, rounding_mode="floor")
        per_row = (rows[:, None] == torch.arange(batch)[None, :]).float()  # [K, B]
        scores = nll @ per_row  # [P, B]: per-row sum of NLL
        loss = nll.sum(1) / torch.clamp(scored.sum().float(), min=1.0)
        if bias is None:
            return loss, scores
        # d loss / d b = (sum_k softmax(z_k + b) - counts of the targets) / K; the counts are the
        # batch's own, so the graph returns only the first sum (a [P, V] output, no [K, V] one-hot)
        return loss, scores, probs.sum(1)

    def _lm_logits(self, picked, bias):
        """The LM head's logits of `picked` [P, K, H], + b when there is a logit bias: one
        [P·K, V] Gemm with b as its bias input, so no second [P, K, V] tensor is formed."""
        head = self.model.get_output_embeddings()
        if bias is None:
            return head(picked)
        b = bias[0] if getattr(head, "bias", None) is None else bias[0] + head.bias
        flat = torch.nn.functional.linear(picked.reshape(-1, picked.shape[-1]), head.weight, b)
        return flat.reshape(picked.shape[0], picked.shape[1], -1)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states whose mask is 1 (sentence-transformers' mean pooling), fp32."""
    weights = mask.to(torch.float32)[:, :, None]
    total = (hidden.float() * weights).sum(dim=1)
    return total / torch.clamp(weights.sum(dim=1), min=1e-9)


def linear_features(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[unit(mean-pooled hidden), 1]: the linear head's features, bias column last."""
    pooled = unit(mean_pool(hidden, mask))
    return torch.cat([pooled, torch.ones_like(pooled[:, :1])], dim=1)


def last_hidden(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, H]: each row's hidden state at its last non-pad position."""
    last = last_nonpad_index(mask)
    return hidden.gather(1, last[:, None, None].expand(-1, 1, hidden.shape[-1])).squeeze(1)


def last_token_features(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[unit(last non-pad hidden state), 1]: a language model's linear-head features, fp32."""
    pooled = unit(last_hidden(hidden, mask).float())
    return torch.cat([pooled, torch.ones_like(pooled[:, :1])], dim=1)


@torch.no_grad()
def label_rows(model: nn.Module, token_ids: list[int]) -> torch.Tensor:
    """[C, H]: the label tokens' LM-head rows over the largest row norm. One constant for
    every row keeps the labels' ranking of each text (the zero-shot argmax) unchanged."""
    rows = model.get_output_embeddings().weight[token_ids].float()
    return rows / rows.norm(dim=1).max()


@torch.no_grad()
def last_token_linear_reference(model: nn.Module, batch: dict) -> tuple:
    """(loss, scores [B, C]) of a language model's unfitted linear head from the model's
    own forward (torch.nn.functional's normalize, not this module's `unit`)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    last = hidden[torch.arange(ids.shape[0]), mask.sum(1) - 1]  # right padding
    features = torch.cat([nn.functional.normalize(last, dim=-1), torch.ones_like(last[:, :1])], dim=1)
    scores = features @ getattr(model, LINEAR_HEAD).weight.float().t()
    return float(nn.functional.cross_entropy(scores, batch["labels"])), scores.numpy()


def add_linear_head(encoder: nn.Module, embeddings: torch.Tensor) -> str:
    """Give `encoder` the dense head H = [scale · e_c, 0] (C x hidden + 1) the linear head
    trains; returns its parameter name. Before a fit it scores like label-embedding."""
    classes, hidden = embeddings.shape
    layer = nn.Linear(hidden + 1, classes, bias=False, dtype=embeddings.dtype)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[:, :hidden] = EMBEDDING_SCALE * embeddings
    encoder.add_module(LINEAR_HEAD, layer)
    return f"{LINEAR_HEAD}.weight"


def add_logit_bias(model: nn.Module) -> str:
    """Give a causal LM a zero logit bias b [1, V] (its LM head's dtype), added to the logits
    of every scored position; returns its parameter name. Zero: the model scores as before."""
    head = model.get_output_embeddings()
    bias = torch.zeros(1, head.weight.shape[0], dtype=head.weight.dtype)
    model.register_parameter(LOGIT_BIAS, nn.Parameter(bias, requires_grad=False))
    return LOGIT_BIAS


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (torch.nn.functional.normalize, eps 1e-12)."""
    return x / torch.clamp(x.norm(dim=-1, keepdim=True), min=1e-12)


@torch.no_grad()
def label_embeddings(encoder: nn.Module, tokenizer, words: list[str]) -> torch.Tensor:
    """[C, H] unit rows: each label word encoded alone ([CLS] word [SEP]) and mean-pooled,
    as sentence-transformers embeds a short text."""
    rows = []
    for word in words:
        batch = tokenizer(word, return_tensors="pt")
        ids, mask = batch["input_ids"], batch["attention_mask"]
        hidden = encoder.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        rows.append(unit(mean_pool(hidden, mask))[0])
    return torch.stack(rows)


@torch.no_grad()
def label_embedding_reference(encoder: nn.Module, embeddings: torch.Tensor, batch: dict) -> tuple:
    """(loss, scores [B, C]) from the unmodified encoder's own forward, for the parity check
    (torch.nn.functional, not this module's pooling, so a slip in either shows)."""
    mask = batch["attention_mask"]
    hidden = encoder(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state.float()
    weights = mask[:, :, None].float()
    pooled = nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)
    scores = EMBEDDING_SCALE * pooled @ embeddings.float().t()
    return float(nn.functional.cross_entropy(scores, batch["labels"])), scores.numpy()


def last_nonpad_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1 (right or left padding alike)."""
    positions = torch.arange(mask.shape[1], device=mask.device)[None, :]
    return (mask.long() * positions).argmax(dim=1)


def candidate_cross_entropy(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of CE over the C candidates, per probe slot: [P, B, C] -> [P]."""
    logp = torch.log_softmax(scores, dim=-1)
    picked = logp.gather(2, labels[None, :, None].expand(scores.shape[0], -1, 1)).squeeze(2)
    return -picked.mean(dim=1)
