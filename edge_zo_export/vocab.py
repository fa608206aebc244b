"""The tokenizer side of a bundle: tokenizer.json, label words and their token ids, padding."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer

from edge_zo.bundle import TOKENIZER_NAME
from edge_zo.errors import UserError


@dataclass
class Labels:
    words: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # label-words head only
    pad_token_id: int = 0


def load_tokenizer(folder: Path):
    """(path of tokenizer.json, the HF tokenizer); the device reads only tokenizer.json."""
    path = folder / TOKENIZER_NAME
    if not path.is_file():
        raise UserError(f"{folder}: no {TOKENIZER_NAME}; the device needs a fast (tokenizers) "
                        f"tokenizer: save one with tokenizer.save_pretrained({str(folder)!r})")
    return path, AutoTokenizer.from_pretrained(folder)


def labels_for(opts, head: str, tokenizer, config, causal: bool = False) -> Labels:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    if opts.task == "causal-lm":
        if opts.label_words:
            raise UserError("--label-words applies to --task classification only")
        return Labels(pad_token_id=pad)
    words = list(opts.label_words) or _config_labels(config)
    if len(words) < 2:
        raise UserError("--task classification needs at least two --label-words, "
                        "e.g. --label-words ' terrible' ' great'")
    # A language model's linear head starts as its label words' LM-head rows: one token each.
    scored_by_tokens = head == "label-words" or (head == "linear" and causal)
    ids = [_single_token(tokenizer, w) for w in words] if scored_by_tokens else []
    return Labels(words, ids, pad)


def _config_labels(config) -> list[str]:
    """A fine-tuned classifier folder names its classes in id2label."""
    if any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        return [config.id2label[i] for i in sorted(config.id2label)]
    return []


def _single_token(tokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise UserError(
            f"label word {word!r} is {len(ids)} tokens {pieces}; each label word must be one "
            f"token (mind the leading space of the template, e.g. ' great'), or score "
            f"multi-token candidates with --task causal-lm")
    return ids[0]
