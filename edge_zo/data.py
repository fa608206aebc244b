"""Local data for fine-tuning: readers, prompt templates, MeZO-protocol sampling, batches.

Rows come from JSONL, CSV or TSV files. A row becomes an `Example` through a `Template`:
for classification, the prompt text and the index of its label among the template's label
words (DESIGN.md section 7 lists the built-in templates the MeZO family uses); for
causal-LM personalization, the text whose tokens are scored (all of it, or only a
completion field after a prompt). A bad row stops the job before training with the file,
the line number and what is wrong, unless `skip_bad` is set, in which case it is counted.
"""

from __future__ import annotations

import csv
import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from edge_zo.bundle import TOKENIZER_NAME
from edge_zo.errors import UserError

READERS = (".jsonl", ".csv", ".tsv")


class DataError(UserError):
    """A data file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Template:
    """How a row becomes a prompt. `prompt` is a str.format pattern over the row's fields.

    `labels` maps each label value as it appears in the data (as a string) to the word that
    stands for it; the candidate is appended to the prompt after `separator`.
    """

    prompt: str
    labels: dict[str, str]
    separator: str = " "
    capitalize: tuple[str, ...] = ()  # fields whose first letter is upper-cased

    @property
    def label_words(self) -> list[str]:
        return [self.separator + word for word in self.labels.values()]


# The MeZO family's prompts (DESIGN.md section 7), keyed by task name.
TEMPLATES = {
    "sst2": Template("{sentence} It was", {"0": "terrible", "1": "great"}),
    "rte": Template('{premise}\nDoes this mean that "{hypothesis}" is true? Yes or No?\n',
                    {"entailment": "Yes", "not_entailment": "No"}, separator=""),
    "cb": Template('Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\n',
                   {"entailment": "Yes", "contradiction": "No", "neutral": "Maybe"}, separator=""),
    "boolq": Template("{passage} {question}?\n", {"true": "Yes", "false": "No"}, separator="",
                      capitalize=("question",)),
    # The prompt that suits small instruction-tuned models (0.805 zero-shot for SmolLM2 on SST-2).
    "review": Template("Review: {text}\nSentiment:", {"negative": "negative", "positive": "positive"}),
    # The bare text, for a sentence-embedding head (MiniLM's label-embedding), which compares
    # the text's embedding with the label words' own: a prompt around the text only blurs
    # it (MiniLM zero-shot on the review sample: 0.66 bare, 0.53 with the review prompt).
    "review-plain": Template("{text}", {"negative": "negative", "positive": "positive"}),
    "sst2-plain": Template("{sentence}", {"0": "negative", "1": "positive"}),
}


@dataclass(frozen=True)
class Example:
    prompt: str
    label: int  # index into the template's labels; -1 for causal-LM text
    completion: str = ""  # causal-LM: the scored part; empty means the whole prompt is scored


@dataclass
class Dataset:
    examples: list[Example]
    path: Path
    skipped: list[str] = field(default_factory=list)  # "line N: reason" of each skipped row


def read_rows(path: str | Path) -> list[tuple[int, dict | None, str]]:
    """(line number, row or None, reason) for every data line of a JSONL, CSV or TSV file."""
    path = Path(path)
    if path.suffix not in READERS:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {READERS}")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".jsonl":
        return [_json_row(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    reader = csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix == ".tsv" else ",")
    return [(reader.line_num, dict(row), "") for row in reader]


def _json_row(number: int, line: str) -> tuple[int, dict | None, str]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return number, None, f"invalid JSON ({err.msg} at column {err.colno})"
    if not isinstance(row, dict):
        return number, None, f"expected a JSON object, got {type(row).__name__}"
    return number, row, ""


def load_classification(path: str | Path, template: Template, skip_bad: bool = False) -> Dataset:
    """Rows with the template's fields and a `label` field -> examples with a label index."""
    label_index = {label: i for i, label in enumerate(template.labels)}

    def convert(row: dict) -> Example:
        label = _field(row, "label")
        if label not in label_index:
            raise ValueError(f"label {label!r} is not one of {list(template.labels)}")
        return Example(_fill(template, row), label_index[label])

    return _load(path, convert, skip_bad)


def load_text(path: str | Path, text_field: str = "text", prompt_field: str | None = None,
              skip_bad: bool = False) -> Dataset:
    """Causal-LM rows: score all of `text_field`, or only it after `prompt_field`."""
    def convert(row: dict) -> Example:
        scored = _field(row, text_field)
        prompt = _field(row, prompt_field) if prompt_field else ""
        return Example(prompt, -1, scored) if prompt_field else Example(scored, -1)

    return _load(path, convert, skip_bad)


def _load(path, convert, skip_bad: bool) -> Dataset:
    path = Path(path)
    dataset = Dataset([], path)
    for number, row, reason in read_rows(path):
        if row is not None:
            try:
                dataset.examples.append(convert(row))
                continue
            except ValueError as err:
                reason = str(err)
        if not skip_bad:
            raise DataError(f"{path}, line {number}: {reason} (or pass skip_bad to skip such rows)")
        dataset.skipped.append(f"line {number}: {reason}")
    if not dataset.examples:
        raise DataError(f"{path}: no usable rows ({len(dataset.skipped)} skipped)")
    return dataset


def _field(row: dict, name: str) -> str:
    if name not in row or row[name] is None:
        raise ValueError(f"missing field {name!r} (fields: {sorted(row)})")
    value = row[name]
    # JSON booleans (BoolQ) are labels too; written the way the data files write them.
    value = str(value).lower() if isinstance(value, bool) else str(value)
    if not value.strip():
        raise ValueError(f"field {name!r} is empty")
    return value


def _fill(template: Template, row: dict) -> str:
    values = {name: _field(row, name) for name in _placeholders(template.prompt)}
    for name in template.capitalize:
        values[name] = values[name][:1].upper() + values[name][1:]
    return template.prompt.format(**values)


def _placeholders(pattern: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(pattern) if name]


def mezo_split(train: list, validation: list, n_train: int = 1000, n_dev: int = 500,
               n_test: int = 1000, seed: int = 0) -> tuple[list, list, list]:
    """The MeZO family's protocol: train and dev sampled from the train split with `seed`
    (dev is the last `n_dev` of one sample of n_train + n_dev), test sampled from the
    validation split (all of it when smaller)."""
    sample = random.Random(seed).sample(train, min(len(train), n_train + n_dev))
    test = random.Random(seed).sample(validation, min(len(validation), n_test))
    return sample[:n_train], sample[n_train:], test


def load_tokenizer(bundle_dir: str | Path):
    """The bundle's tokenizer with its own padding and truncation off: `make_batch` pads
    and cuts (from the left), and a tokenizer.json that pads to a fixed length (MiniLM's
    pads to 128) would otherwise fill a cut prompt with [PAD] tokens the mask counts."""
    tokenizer = Tokenizer.from_file(str(Path(bundle_dir) / TOKENIZER_NAME))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


@dataclass(frozen=True)
class Batch:
    input_ids: np.ndarray  # int64 [B, T], right-padded
    attention_mask: np.ndarray  # int64 [B, T]
    labels: np.ndarray  # int64 [B] (classification) or all -1
    loss_mask: np.ndarray  # float32 [B, T]: 1 where the token is scored (causal LM)


def make_batch(examples: list[Example], tokenizer, max_seq_len: int, pad_id: int) -> Batch:
    """Tokenize and right-pad. Prompts too long are cut from the left: the end of a prompt
    ("It was", "Sentiment:") is where the label is read, so it must survive."""
    rows, scored = [], []
    for ex in examples:
        prompt_ids = tokenizer.encode(ex.prompt).ids if ex.prompt else []
        done_ids = tokenizer.encode(ex.completion, add_special_tokens=False).ids if ex.completion else []
        ids = (prompt_ids + done_ids)[-max_seq_len:]
        n_scored = min(len(done_ids), len(ids)) if ex.completion else len(ids)
        rows.append(ids)
        scored.append(n_scored)
    width = max(1, max(len(ids) for ids in rows))
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    loss_mask = np.zeros((len(rows), width), dtype=np.float32)
    for i, (ids, n_scored) in enumerate(zip(rows, scored)):
        input_ids[i, :len(ids)] = ids
        mask[i, :len(ids)] = 1
        # The first token has no predecessor to be predicted from.
        loss_mask[i, max(1, len(ids) - n_scored):len(ids)] = 1
    labels = np.array([ex.label for ex in examples], dtype=np.int64)
    return Batch(input_ids, mask, labels, loss_mask)
