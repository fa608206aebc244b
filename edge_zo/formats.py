"""Causal-LM data formats: how a chat, prompt/completion, Alpaca or plain-text row becomes
the pieces of one training sequence, each marked scored (the response) or not (the prompt).

A format is chosen by `data_format` or, under `auto`, read off the first row's fields
(`detect`); every later row must fit it, else it is a bad row (FILE, line N: ...), like any
other (edge_zo/data.py `_load`). The pieces are tokenized one at a time and concatenated
(edge_zo/data.py `make_batch`), so the loss mask follows their boundaries exactly.

Chat rows are rendered in a fixed, documented format (FALLBACK_TURN), not the model's own
chat template: a bundle carries tokenizer.json only (export does not record
tokenizer_config.json's chat_template), and rendering a Jinja template on the device would
need jinja2 there. docs/data.md says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from edge_zo.templates import field_value

FORMATS = ("auto", "text", "chat", "prompt-completion", "alpaca")
ROLES = ("system", "user", "assistant")
FALLBACK_TURN = "<|{role}|>\n"  # then the content and "\n"

# The Stanford Alpaca prompts (github.com/tatsu-lab/stanford_alpaca, train.py PROMPT_DICT).
ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                   "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")

# (text, scored): what one row becomes
Pieces = tuple[tuple[str, bool], ...]


@dataclass
class RowFormat:
    """The format rows are read in: fixed by `data_format`, or set by the first row (auto)."""

    chosen: str = "auto"
    text_field: str = "text"
    prompt_field: str | None = None
    loss_on_prompt: bool = False
    format: str = ""  # the one in use, once known
    how: str = ""  # why: "data_format=chat" or "detected from the first row's fields ..."

    def pieces(self, row: dict) -> Pieces:
        """The row's pieces; ValueError (a bad row) when it does not fit the format."""
        if not self.format:
            self.format, self.how = self._decide(row)
        try:
            pieces = RENDER[self.format](self, row)
        except ValueError as err:
            raise ValueError(f"{err} ({self.format} rows: {self.how})") from None
        return tuple((text, True) for text, _ in pieces) if self.loss_on_prompt else pieces

    def _decide(self, row: dict) -> tuple[str, str]:
        if self.chosen != "auto":
            return self.chosen, f"data_format={self.chosen}"
        if self.prompt_field or self.text_field != "text":
            return "text", f"text_field={self.text_field!r}" + (f", prompt_field={self.prompt_field!r}"
                                                                 if self.prompt_field else "")
        found = detect(row)
        none = ": none of messages, instruction + output, prompt + completion" if found == "text" else ""
        return found, f"detected from the first row's fields {sorted(row)}{none}; set data_format to choose"

    def note(self, path) -> str:
        """One line for the terminal: which format was read, how, and what is scored."""
        scored = "every token" if self.loss_on_prompt else SCORED[self.format]
        how = f"{self.how}; chat turns rendered as <|role|>\\ncontent\\n (the bundle carries no chat " \
              "template, docs/data.md)" if self.format == "chat" else self.how
        return f"{path}: read as {self.format} rows ({how}); loss on {scored}"


SCORED = {"text": "the text field's tokens", "chat": "the assistant turns only (loss_on_prompt=true: all)",
          "prompt-completion": "the completion only (loss_on_prompt=true: all)",
          "alpaca": "the output only (loss_on_prompt=true: all)"}


def detect(row: dict) -> str:
    """The format a row's fields say: messages -> chat, instruction + output -> alpaca,
    prompt + completion -> prompt-completion, else text (`RowFormat` takes text_field or
    prompt_field, when set, to mean text)."""
    if "messages" in row:
        return "chat"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "prompt-completion"
    return "text"


def _text(fmt: RowFormat, row: dict) -> Pieces:
    scored = field_value(row, fmt.text_field)
    return ((field_value(row, fmt.prompt_field), False), (scored, True)) if fmt.prompt_field else ((scored, True),)


def _prompt_completion(fmt: RowFormat, row: dict) -> Pieces:
    return (field_value(row, "prompt"), False), (field_value(row, "completion"), True)


def _alpaca(fmt: RowFormat, row: dict) -> Pieces:
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise ValueError(f"field 'input' is {type(extra).__name__}, not text")
    values = {"instruction": field_value(row, "instruction"), "input": (extra or "").strip()}
    prompt = (ALPACA_INPUT if values["input"] else ALPACA_NO_INPUT).format(**values)
    return (prompt, False), (field_value(row, "output"), True)


def _chat(fmt: RowFormat, row: dict) -> Pieces:
    messages = _messages(row)
    pieces: list[tuple[str, bool]] = []
    for i, message in enumerate(messages, 1):
        role, content = _message(message, i)
        header = FALLBACK_TURN.format(role=role)
        if role == "assistant":  # its content and end of turn are what the model learns to write
            pieces += [(header, False), (content + "\n", True)]
        else:
            pieces.append((header + content + "\n", False))
    if not any(scored for _, scored in pieces):
        raise ValueError("no assistant message: nothing to learn from")
    return _merge(pieces)


def _messages(row: dict) -> list:
    if "messages" not in row:
        raise ValueError(f"missing field 'messages' (fields: {sorted(row)})")
    messages = row["messages"]
    if isinstance(messages, str):  # a CSV cell holds the list as JSON text
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as err:
            raise ValueError(f"field 'messages' is not a JSON list ({err.msg} at column {err.colno})") from None
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"field 'messages' must be a non-empty list of {{role, content}} objects, "
                         f"got {type(messages).__name__ if messages else 'an empty list'}")
    return messages


def _message(message, i: int) -> tuple[str, str]:
    if not isinstance(message, dict):
        raise ValueError(f"message {i} is {type(message).__name__}, not a {{role, content}} object")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise ValueError(f"message {i} has role {role!r}, not one of {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise ValueError(f"message {i} ({role}) has {'no' if content is None else type(content).__name__} "
                         "content; content must be text")
    return role, content


def _merge(pieces: list[tuple[str, bool]]) -> Pieces:
    """Neighbouring pieces of the same kind as one: fewer tokenization boundaries."""
    out: list[tuple[str, bool]] = []
    for text, scored in pieces:
        if out and out[-1][1] == scored:
            out[-1] = (out[-1][0] + text, scored)
        else:
            out.append((text, scored))
    return tuple(out)


RENDER = {"text": _text, "chat": _chat, "prompt-completion": _prompt_completion, "alpaca": _alpaca}
