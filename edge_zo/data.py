"""Local data for fine-tuning: readers, examples, MeZO-protocol sampling, batches.

Rows come from JSONL, CSV or TSV files. A row becomes an example through a template
(edge_zo/templates.py: the built-ins DESIGN.md section 7 lists, or the run's own): for
classification, an `Example` with the prompt text and the index of its label among the
template's labels; for multiple choice (COPA), a `ChoiceExample` with the prompt, one
continuation per candidate and the index of the right one (its batch has a row per
candidate; edge_zo/choice.py scores them); for causal-LM personalization, the text whose
tokens are scored (all of it, or only a completion field after a prompt). A bad row stops
the job before training with the file, the line number and what is wrong, unless
`skip_bad` is set, in which case it is counted.
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from edge_zo.bundle import TOKENIZER_NAME, BundleError, read_manifest, tokenizer_sha256
from edge_zo.formats import Pieces, RowFormat
from edge_zo.readers import DataError, read_rows  # noqa: F401  (both were defined here: callers import them from data)
from edge_zo.templates import ChoiceTemplate, Template, candidates, choice_prompt, field_value, fill

@dataclass(frozen=True)
class Example:
    prompt: str
    label: int  # index into the template's labels; -1 for causal-LM text
    completion: str = ""  # causal-LM: the scored part; empty means the whole prompt is scored
    pieces: Pieces = ()  # causal-LM formats (edge_zo/formats.py): (text, scored) in order; overrides the above


@dataclass(frozen=True)
class ChoiceExample:
    prompt: str
    candidates: tuple[str, ...]  # each scored as a continuation of the prompt
    label: int  # index of the right candidate


@dataclass
class Dataset:
    examples: list[Example]
    path: Path
    skipped: list[str] = field(default_factory=list)  # "line N: reason" of each skipped row
    integer_labels: int = 0  # rows whose label was an integer read as the template's i-th label
    multiline: list[str] = field(default_factory=list)  # "lines N-M" of each CSV record over lines
    note: str = ""  # causal-LM: which format was read and how (said once on the terminal)

    def skipped_report(self, role: str) -> str:
        """One line per skipped row, `ROLE: FILE, line N: reason` (RUN/skipped_rows.txt)."""
        return "".join(f"{role}: {self.path}, {line}\n" for line in self.skipped)


def load_classification(path: str | Path, template: Template, skip_bad: bool = False) -> Dataset:
    """Rows with the template's fields and a `label` field -> examples with a label index."""
    label_index = {label: i for i, label in enumerate(template.labels)}
    counted = {"integer": 0}

    def convert(row: dict) -> Example:
        label = field_value(row, "label")
        if label in label_index:
            return Example(fill(template, row), label_index[label])
        if template.integer_labels and INTEGER.fullmatch(label.strip()):
            example = Example(fill(template, row), integer_label(int(label), list(template.labels)))
            counted["integer"] += 1
            return example
        raise ValueError(f"label {label!r} is not one of {list(template.labels)}")

    dataset = _load(path, convert, skip_bad)
    dataset.integer_labels = counted["integer"]
    return dataset


INTEGER = re.compile(r"[+-]?\d+")


def integer_label(value: int, labels: list[str]) -> int:
    """An integer label i (the Hugging Face convention) as the template's i-th label."""
    if not 0 <= value < len(labels):
        raise ValueError(f"label {value} is out of range: integer labels are read as the bundle's labels in "
                         f"order, 0..{len(labels) - 1} = {labels}; fix the row, or name a template whose "
                         "labels are these integers (template_labels=..., docs/data.md)")
    return value


def load_choice(path: str | Path, template: ChoiceTemplate, skip_bad: bool = False) -> Dataset:
    """Rows with the template's fields and a `label` field (the right candidate's index)."""
    def convert(row: dict) -> ChoiceExample:
        label = field_value(row, "label")
        if label not in [str(i) for i in range(len(template.choices))]:
            raise ValueError(f"label {label!r} is not a candidate index 0..{len(template.choices) - 1}")
        return ChoiceExample(choice_prompt(template, row), candidates(template, row), int(label))

    return _load(path, convert, skip_bad)


def load_text(path: str | Path, text_field: str = "text", prompt_field: str | None = None,
              skip_bad: bool = False, data_format: str = "auto", loss_on_prompt: bool = False) -> Dataset:
    """Causal-LM rows in a format (edge_zo/formats.py): plain text (all of `text_field`, or
    only it after `prompt_field`), chat, prompt/completion or Alpaca, chosen by `data_format`
    or read off the first row; by default only the response's tokens are scored."""
    fmt = RowFormat(data_format, text_field, prompt_field, loss_on_prompt)
    dataset = _load(path, lambda row: Example("", -1, pieces=fmt.pieces(row)), skip_bad)
    dataset.note = fmt.note(dataset.path)
    return dataset


def _load(path, convert, skip_bad: bool) -> Dataset:
    path = Path(path)
    dataset = Dataset([], path)
    for number, row, reason in read_rows(path):
        if row is not None:
            try:
                dataset.examples.append(convert(row))
                if reason:  # a CSV record over several lines
                    dataset.multiline.append(reason)
                continue
            except ValueError as err:
                reason = str(err)
        if not skip_bad:
            raise DataError(f"{path}, line {number}: {reason} (or pass skip_bad=true to skip and count such rows)")
        dataset.skipped.append(f"line {number}: {reason}")
    if not dataset.examples:
        first = f"; the first, {dataset.skipped[0]}" if dataset.skipped else ""
        raise DataError(f"{path}: no usable rows ({len(dataset.skipped)} skipped{first})")
    return dataset


def mezo_split(train: list, validation: list, n_train: int = 1000, n_dev: int = 500,
               n_test: int = 1000, seed: int = 0) -> tuple[list, list, list]:
    """The MeZO family's protocol: train and dev sampled from the train split with `seed`
    (dev is the last `n_dev` of one sample of n_train + n_dev), test sampled from the
    validation split (all of it when smaller)."""
    sample = random.Random(seed).sample(train, min(len(train), n_train + n_dev))
    test = random.Random(seed).sample(validation, min(len(validation), n_test))
    return sample[:n_train], sample[n_train:], test


def load_tokenizer(bundle_dir: str | Path, manifest=None):
    """The bundle's tokenizer with its own padding and truncation off: `make_batch` pads
    and cuts (from the left), and a tokenizer.json that pads to a fixed length (MiniLM's
    pads to 128) would otherwise fill a cut prompt with [PAD] tokens the mask counts.

    A file that is empty, truncated or another model's stops here with a one-line
    BundleError (`check_tokenizer`): another model's ids would index the wrong embedding
    rows, a wrong result that looks right."""
    path = Path(bundle_dir) / TOKENIZER_NAME
    fix = "copy the bundle's own tokenizer.json back, or re-export the bundle (edge-zo export)"
    try:
        text = path.read_bytes().decode("utf-8")
        if not text.strip():
            raise ValueError("the file is empty")
        tokenizer = Tokenizer.from_str(text)
    except OSError as err:
        raise BundleError(f"{path}: cannot be read ({err.strerror or err}); {fix}") from None
    except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exceptions on bad JSON
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise BundleError(f"{path}: not a readable tokenizer ({reason}); the file is truncated or "
                          f"damaged: {fix}") from None
    check_tokenizer(path, text, tokenizer, manifest if manifest is not None else read_manifest(bundle_dir), fix)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def check_tokenizer(path: Path, text: str, tokenizer, manifest, fix: str) -> None:
    """Another model's tokenizer.json is refused: by the hash export records (bundles
    exported since issue 15), else by the label words' token ids (label-words bundles).
    Cheap: one hash, or a few encodes."""
    source = manifest.source if isinstance(manifest.source, dict) else {}
    if source.get("tokenizer_sha256"):  # the exact file: nothing else to check
        if tokenizer_sha256(text.encode("utf-8")) == source["tokenizer_sha256"]:
            return
        rows = source.get("vocab_size")
        sizes = f"; it has {tokenizer.get_vocab_size(with_added_tokens=True)} tokens, the model's embedding " \
                f"{rows} rows" if rows else ""
        raise BundleError(f"{path}: not the tokenizer this bundle was exported with (its sha256 differs from "
                          f"the one manifest.json records{sizes}; another model's?): {fix}")
    for word, token_id in zip(manifest.label_words, manifest.label_token_ids):
        ids = tokenizer.encode(word, add_special_tokens=False).ids
        if ids != [token_id]:
            raise BundleError(f"{path}: label word {word!r} is token {ids} here, but the bundle was exported "
                              f"with token {token_id} (another model's tokenizer?): {fix}")


@dataclass(frozen=True)
class Batch:
    input_ids: np.ndarray  # int64 [B, T], right-padded
    attention_mask: np.ndarray  # int64 [B, T]
    labels: np.ndarray  # int64 [B] (classification) or all -1
    loss_mask: np.ndarray  # float32 [B, T]: 1 where the token is scored (causal LM)
    choice: ChoiceLayout | None = None  # multiple choice: which rows belong to which example


@dataclass(frozen=True)
class ChoiceLayout:
    """A multiple-choice batch's rows are its examples' candidates, example after example."""

    sizes: tuple[int, ...]  # candidates of each example
    labels: np.ndarray  # int64 [examples]: index of the right candidate within its example


def make_batch(examples: list[Example], tokenizer, max_seq_len: int, pad_id: int) -> Batch:
    """Tokenize and right-pad. Prompts too long are cut from the left: the end of a prompt
    ("It was", "Sentiment:") is where the label is read, so it must survive.
    Multiple-choice examples become a row per candidate (`make_choice_batch`)."""
    if examples and isinstance(examples[0], ChoiceExample):
        return make_choice_batch(examples, tokenizer, max_seq_len, pad_id)
    rows, flags = [], []
    for ex in examples:
        ids, scored = [], []
        for i, (text, is_scored) in enumerate(pieces(ex)):
            # Special tokens (a BOS) only before the first piece; an empty prompt adds none.
            piece = encode_tail(tokenizer, text, max_seq_len, i == 0) if text else []
            ids += piece
            scored += [is_scored] * len(piece)
        rows.append(ids[-max_seq_len:])
        flags.append(scored[-max_seq_len:])
    width = max(1, max(len(ids) for ids in rows))
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    loss_mask = np.zeros((len(rows), width), dtype=np.float32)
    for i, (ids, scored) in enumerate(zip(rows, flags)):
        input_ids[i, :len(ids)] = ids
        mask[i, :len(ids)] = 1
        loss_mask[i, :len(ids)] = scored
        loss_mask[i, 0] = 0  # the first token has no predecessor to be predicted from
    labels = np.array([ex.label for ex in examples], dtype=np.int64)
    return Batch(input_ids, mask, labels, loss_mask)


def pieces(ex: Example) -> Pieces:
    """(text, scored) in order: a format's pieces, else the prompt (scored when alone) and
    the completion."""
    if ex.pieces:
        return ex.pieces
    return ((ex.prompt, False), (ex.completion, True)) if ex.completion else ((ex.prompt, True),)


TAIL_CHARS = 16  # characters per token assumed when a long text is cut before tokenizing
TAIL_MARGIN = 16  # tokens tokenized beyond the kept ones: the cut splits only the first word


def encode_tail(tokenizer, text: str, keep: int, add_special_tokens: bool = True) -> list[int]:
    """The ids of `text`, of which callers keep the last `keep`. A text far longer than that
    is tokenized from a suffix (growing until it yields `keep` + TAIL_MARGIN tokens), so
    the ids kept are the same while memory stays per batch: a 19 MB one-line row cost
    2.3 GB of tokenizer memory whole (issue 15), and the plan counts data by its bytes."""
    span = TAIL_CHARS * (keep + TAIL_MARGIN)
    while len(text) > span:
        ids = tokenizer.encode(text[-span:], add_special_tokens=add_special_tokens).ids
        if len(ids) >= keep + TAIL_MARGIN:
            return ids
        span *= 4
    return tokenizer.encode(text, add_special_tokens=add_special_tokens).ids


def make_choice_batch(examples: list[ChoiceExample], tokenizer, max_seq_len: int, pad_id: int) -> Batch:
    """One causal-LM row per candidate (the prompt unscored, the candidate scored)."""
    rows = [Example(ex.prompt, -1, candidate) for ex in examples for candidate in ex.candidates]
    layout = ChoiceLayout(tuple(len(ex.candidates) for ex in examples),
                          np.array([ex.label for ex in examples], dtype=np.int64))
    return dataclasses.replace(make_batch(rows, tokenizer, max_seq_len, pad_id), choice=layout)
