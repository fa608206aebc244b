"""A deployed model folder in use: `edge_zo.load(DIR).predict(texts)` and `edge-zo predict`.

`edge-zo deploy RUN --out DIR` writes model.onnx, tokenizer.json, `edge_zo_model.json`
(what the model is and how its inputs are made: docs/deploy.md) and a model card. This
module reads that folder with onnxruntime, numpy and tokenizers only (no onnx package,
no torch), formats each row exactly as training did (the run's template), and returns
label names and probabilities (classification) or mean NLL per token (causal-lm).

    model = edge_zo.load("deployed/")
    model.predict(["a great movie", "a waste of time"])     # ['positive', 'negative']
    model.predict_proba(["a great movie"])                  # array([[0.08, 0.92]])
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge_zo.data import Example, make_batch
from edge_zo.errors import UserError
from edge_zo.templates import Template, placeholders, fill

MODEL_NAME, DESCRIPTION_NAME, TOKENIZER_NAME = "model.onnx", "edge_zo_model.json", "tokenizer.json"
FORMAT_VERSION = 1
BATCH = 16


def load(folder: str | Path, provider: str = "cpu") -> "DeployedModel":
    """The deployed model in `folder` (written by `edge-zo deploy RUN --out DIR`)."""
    return DeployedModel(Path(folder), provider)


class DeployedModel:
    def __init__(self, folder: Path, provider: str = "cpu"):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder, self.description = folder, read_description(folder)
        self.task = self.description["task"]
        if self.task not in ("classification", "causal-lm"):
            raise UserError(f"{folder}: a {self.task} model; `predict` reads classification and causal-lm models "
                            "(score multiple choice with `edge-zo eval --run RUN`)")
        self.tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_NAME))
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else \
            ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(folder / MODEL_NAME), providers=providers)
        template = self.description.get("template")
        self.template = Template(template["prompt"], template["labels"], template["separator"],
                                 tuple(template["capitalize"]), template["integer_labels"]) if template else None
        self.labels = self.description.get("labels", [])

    # ---- classification --------------------------------------------------------------
    def predict_proba(self, rows) -> np.ndarray:
        """[rows, labels]: softmax of the model's label scores, labels in `self.labels` order."""
        scores = self._scores([Example(self.prompt(row), 0) for row in rows])
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def predict(self, rows) -> list[str]:
        """The label name of each row: a text, or a dict with the template's fields."""
        if self.task == "causal-lm":
            raise UserError("a causal-lm model scores text: use .nll(texts) (mean NLL per token)")
        return [self.labels[i] for i in np.argmax(self.predict_proba(rows), axis=1)]

    # ---- causal-lm --------------------------------------------------------------------
    def nll(self, texts) -> list[float]:
        """Mean negative log-likelihood per token of each text (lower: the model expects it more)."""
        return self.nll_with_tokens(texts)[0]

    def nll_with_tokens(self, texts) -> tuple[list[float], list[int]]:
        """(mean NLL per token, scored tokens) of each text: a set's NLL per token is
        sum(mean·tokens) / sum(tokens), as `edge-zo eval` reports it."""
        if self.task != "causal-lm":
            raise UserError("nll() scores text with a causal-lm model; this one classifies: use .predict")
        field = self.description.get("text_field", "text")
        examples = [Example(row if isinstance(row, str) else str(row[field]), -1) for row in texts]
        means, tokens = [], []
        for start in range(0, len(examples), BATCH):
            batch = self._batch(examples[start:start + BATCH])
            counts = batch.loss_mask.sum(axis=1)
            means += [float(v) for v in self._run(batch) / np.maximum(counts, 1.0)]  # summed NLL per row
            tokens += [int(c) for c in counts]
        return means, tokens

    # ---- shared ------------------------------------------------------------------------
    def prompt(self, row) -> str:
        """The text the model reads for a row (the run's template filled); ValueError for a
        row without the template's fields."""
        if self.task != "classification":
            raise UserError("predict_proba() classifies; this is a causal-lm model: use .nll(texts)")
        if isinstance(row, str):
            fields = placeholders(self.template.prompt)
            if len(fields) != 1:
                raise UserError(f"this model's template reads the fields {fields}: pass each row as a dict")
            row = {fields[0]: row}
        return fill(self.template, row)

    def _scores(self, examples: list[Example]) -> np.ndarray:
        parts = [self._run(self._batch(examples[i:i + BATCH])) for i in range(0, len(examples), BATCH)]
        return np.concatenate(parts).astype(np.float64) if parts else np.empty((0, len(self.labels)))

    def _batch(self, examples):
        return make_batch(examples, self.tokenizer, self.description["max_seq_len"], self.description["pad_token_id"])

    def _run(self, batch) -> np.ndarray:
        feed = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if self.task == "causal-lm":
            feed["loss_mask"] = batch.loss_mask
        return self.session.run([self.description["output"]["name"]], feed)[0]


def read_description(folder: Path) -> dict:
    path = folder / DESCRIPTION_NAME
    if not path.is_file():
        raise UserError(f"{folder}: no {DESCRIPTION_NAME}; is it a folder written by `edge-zo deploy RUN --out DIR`?")
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: damaged ({err}); deploy the run again") from None
    if description.get("format") != FORMAT_VERSION:
        raise UserError(f"{path}: format {description.get('format')!r}, this edge-zo reads {FORMAT_VERSION}; "
                        "deploy the run again with this edge-zo")
    return description
