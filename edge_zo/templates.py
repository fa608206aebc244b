"""Prompt templates: how a data row becomes text. Pure functions over dicts, no files.

Two kinds (DESIGN.md section 7 lists the MeZO family's, built in here as TEMPLATES):
  Template        classification: a prompt, and the row's label mapped to a label word
                  (the bundle's label words, fixed at export, are what is scored);
  ChoiceTemplate  multiple choice (COPA) on a causal-LM bundle: a prompt and one
                  continuation per candidate field, scored by edge_zo/choice.py.
Templates are configuration: a run names a built-in (`template`) or writes its own
(`template_prompt` with `template_labels` or `template_choices`; `user_template`), and
`fit_template` checks either against the bundle before any data is read.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from edge_zo.errors import UserError


@dataclass(frozen=True)
class Template:
    """How a row becomes a prompt. `prompt` is a str.format pattern over the row's fields.

    `labels` maps each label value as it appears in the data (as a string) to the word that
    stands for it; the candidate is appended to the prompt after `separator`.
    `integer_labels`: a row's label may also be an integer i in 0..N-1 (the Hugging Face
    convention), read as the template's i-th label, which fit_template has made the
    bundle's i-th label word (edge_zo/data.py says so once, and refuses one out of range).
    """

    prompt: str
    labels: dict[str, str]
    separator: str = " "
    capitalize: tuple[str, ...] = ()  # fields whose first letter is upper-cased
    integer_labels: bool = False

    @property
    def label_words(self) -> list[str]:
        return [self.separator + word for word in self.labels.values()]


@dataclass(frozen=True)
class ChoiceTemplate:
    """Multiple choice: one prompt per row, one scored continuation per candidate field.

    `prompt` is a str.format pattern over the row's fields after two rewrites: `maps`
    replaces a field's value by its text (a value outside the map is a bad row), and
    `drop_period` fields lose a final period. Each field in `choices` is a candidate,
    appended after `separator` (with its first word lower-cased unless it is "I" when
    `lower_first`); the row's `label` is the index of the right candidate.
    """

    prompt: str
    choices: tuple[str, ...]
    separator: str = " "
    maps: dict[str, dict[str, str]] = field(default_factory=dict)
    drop_period: tuple[str, ...] = ()
    lower_first: bool = False


# The MeZO family's prompts (DESIGN.md section 7), keyed by task name.
TEMPLATES: dict[str, Template | ChoiceTemplate] = {
    "sst2": Template("{sentence} It was", {"0": "terrible", "1": "great"}),
    "rte": Template('{premise}\nDoes this mean that "{hypothesis}" is true? Yes or No?\n',
                    {"entailment": "Yes", "not_entailment": "No"}, separator=""),
    "cb": Template('Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\n',
                   {"entailment": "Yes", "contradiction": "No", "neutral": "Maybe"}, separator=""),
    "boolq": Template("{passage} {question}?\n", {"true": "Yes", "false": "No"}, separator="",
                      capitalize=("question",)),
    # "The man turned on the faucet" + " so" + " water flowed from the spout." (causal-LM bundle)
    "copa": ChoiceTemplate("{premise} {question}", ("choice1", "choice2"),
                           maps={"question": {"cause": "because", "effect": "so"}},
                           drop_period=("premise",), lower_first=True),
    # The prompt that suits small instruction-tuned models (0.805 zero-shot for SmolLM2 on SST-2).
    # The two defaults (`default_template_name`) also read integer labels 0/1.
    "review": Template("Review: {text}\nSentiment:", {"negative": "negative", "positive": "positive"},
                       integer_labels=True),
    # The bare text, for MiniLM's heads on the sentence embedding (linear, label-embedding):
    # a prompt around the text only blurs the embedding (MiniLM zero-shot on the review
    # sample: 0.66 bare, 0.53 with the review prompt; its linear probe's CV 0.67 vs 0.54).
    "review-plain": Template("{text}", {"negative": "negative", "positive": "positive"}, integer_labels=True),
    "sst2-plain": Template("{sentence}", {"0": "negative", "1": "positive"}),
}
CLASSIFICATION = [name for name, t in TEMPLATES.items() if isinstance(t, Template)]
MULTIPLE_CHOICE = [name for name, t in TEMPLATES.items() if isinstance(t, ChoiceTemplate)]


def registry_help() -> str:
    """The built-ins for --help, from TEMPLATES itself so that the list cannot drift."""
    return (f"{', '.join(CLASSIFICATION)} (classification); {', '.join(MULTIPLE_CHOICE)} (multiple choice, "
            "causal-lm bundle)")


def default_template_name(manifest) -> str | None:
    """The template a bundle reads when the run names none: None (score text_field) for a
    causal-lm bundle; `review`, a prompt, for a bundle that scores a language model's next
    token (label words, or a linear head started from them: it records label_token_ids);
    `review-plain`, the bare text, for the others: an encoder's heads on the sentence
    embedding (MiniLM) and a trained classifier read the text alone (a prompt around it
    blurred MiniLM's embedding: zero-shot 0.46 vs 0.51, linear probe CV 0.54 vs 0.67)."""
    if manifest.task == "causal-lm":
        return None
    return "review" if manifest.label_token_ids else "review-plain"


# ---- templates from the config ----------------------------------------------------------

def user_template(prompt: str, labels: tuple[str, ...] = (), choices: tuple[str, ...] = (),
                  separator: str = " ") -> Template | ChoiceTemplate:
    """A template written in the run's config (template_prompt, template_labels or
    template_choices, template_separator). `labels` are the label values in the order of
    the bundle's label words, each optionally `value=word`; `choices` are candidate fields.
    Raises ValueError with the fix."""
    if not _pattern_fields(prompt):
        raise ValueError(f"template_prompt {prompt!r} has no {{field}} placeholder: "
                         "write the row's fields in braces, e.g. 'Review: {text}\\nSentiment:'")
    if bool(labels) == bool(choices):
        raise ValueError("template_prompt needs exactly one of template_labels (classification: "
                         "the label values, e.g. negative,positive) and template_choices (multiple "
                         "choice: the candidate fields, e.g. choice1,choice2)")
    if choices:
        return ChoiceTemplate(prompt, tuple(choices), separator)
    pairs = [item.partition("=") for item in labels]
    values = [value.strip() for value, _, _ in pairs]
    if len(set(values)) != len(values) or not all(values):
        raise ValueError(f"template_labels {list(labels)}: label values must be distinct and non-empty")
    return Template(prompt, {v: (word.strip() if sep else v) for v, (_, sep, word) in zip(values, pairs)},
                    separator)


def _pattern_fields(pattern: str) -> list[str]:
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None]
    except ValueError as err:
        raise ValueError(f"template_prompt {pattern!r} is not a valid pattern ({err}); "
                         "write literal braces as {{ and }}") from None
    if any(not name.isidentifier() for name in names):
        raise ValueError(f"template_prompt {pattern!r}: each placeholder must name a field, e.g. {{text}}")
    return names


def fit_template(template, manifest, name: str, explicit_words: dict[int, str] | None = None):
    """The template a bundle can use, or a one-line UserError saying what to use instead.

    None means the bundle's default (`default_template_name`). `explicit_words` (label
    index -> word a user template wrote)
    must be the bundle's label words: those are what is scored, in that order.
    """
    causal = manifest.task == "causal-lm"
    if template is None and causal:
        return None
    if template is None:  # the default goes through every check below, like a named one (issue 15)
        default = default_template_name(manifest)
        template, name = TEMPLATES[default], f"{default} (the default for this bundle)"
    if causal and name == "review":
        return None  # the default before causal-lm bundles took templates: older runs' configs hold it
    if causal and not isinstance(template, ChoiceTemplate):
        raise UserError(f"template {name!r} is for a classification bundle, but the bundle is causal-lm: "
                        f"use a multiple-choice template ({', '.join(MULTIPLE_CHOICE)}, or your own with "
                        "template_choices) or none (score text_field)")
    if not causal and isinstance(template, ChoiceTemplate):
        raise UserError(f"template {name!r} is multiple choice and needs a causal-lm bundle (edge-zo export "
                        f"--task causal-lm); for this classification bundle (label words "
                        f"{manifest.label_words}) use one of {', '.join(CLASSIFICATION)} or template_labels")
    if not causal and len(template.labels) != len(manifest.label_words):
        raise UserError(f"template {name!r} has {len(template.labels)} labels but the bundle was exported "
                        f"with {len(manifest.label_words)} label words {manifest.label_words}: name a template "
                        f"with {len(manifest.label_words)} labels (--template) or write your own "
                        "(template_prompt=... template_labels=...; docs/data.md)")
    for i, word in (explicit_words or {}).items():
        if word.strip() != manifest.label_words[i].strip():
            raise UserError(f"template_labels gives label {i} the word {word!r}, but the bundle's label "
                            f"word {i} is {manifest.label_words[i]!r} (label words {manifest.label_words}): "
                            "reorder template_labels, or write the values alone")
    if not causal and _swapped(list(template.labels.values()), manifest.label_words):
        raise UserError(f"template {name!r} maps its labels to the words {list(template.labels.values())}, the "
                        f"bundle's label words are {manifest.label_words}, the same words in another order: "
                        "label i would be scored as the bundle's word i; write your own template with "
                        "template_labels in the bundle's order (docs/data.md)")
    return template


def _swapped(words: list[str], label_words: list[str]) -> bool:
    """The same label words in another order: a mapping that would train labels backwards."""
    ours, theirs = [w.strip().lower() for w in words], [w.strip().lower() for w in label_words]
    return sorted(ours) == sorted(theirs) and ours != theirs


def explicit_words(labels: tuple[str, ...]) -> dict[int, str]:
    """Label index -> word, for the template_labels items written as value=word."""
    return {i: item.partition("=")[2] for i, item in enumerate(labels) if "=" in item}


# ---- rendering a row --------------------------------------------------------------------

def field_value(row: dict, name: str) -> str:
    """A row's field as text; ValueError (the row is bad) when it is missing or empty."""
    if name not in row or row[name] is None:
        raise ValueError(f"missing field {name!r} (fields: {sorted(row)})")
    value = row[name]
    # JSON booleans (BoolQ) are labels too; written the way the data files write them.
    value = str(value).lower() if isinstance(value, bool) else str(value)
    if not value.strip():
        raise ValueError(f"field {name!r} is empty")
    return value


def fill(template: Template, row: dict) -> str:
    """A classification template's prompt for a row."""
    values = {name: field_value(row, name) for name in placeholders(template.prompt)}
    for name in template.capitalize:
        values[name] = values[name][:1].upper() + values[name][1:]
    return template.prompt.format(**values)


def choice_prompt(template: ChoiceTemplate, row: dict) -> str:
    """A multiple-choice template's prompt: "The woman retired so" for a COPA row."""
    values = {name: field_value(row, name) for name in placeholders(template.prompt)}
    for name in set(template.maps) & set(values):
        if values[name] not in template.maps[name]:
            raise ValueError(f"field {name!r} is {values[name]!r}, not one of {list(template.maps[name])}")
        values[name] = template.maps[name][values[name]]
    for name in template.drop_period:
        values[name] = values[name].rstrip().removesuffix(".")
    return template.prompt.format(**values)


def candidates(template: ChoiceTemplate, row: dict) -> tuple[str, ...]:
    """The row's candidate continuations, each after the separator."""
    return tuple(template.separator + _candidate(template, field_value(row, name)) for name in template.choices)


def _candidate(template: ChoiceTemplate, text: str) -> str:
    # COPA's candidates continue a sentence: "She lost..." -> "she lost...", "I ..." stays.
    first, space, rest = text.partition(" ")
    if template.lower_first and first != "I":
        first = first.lower()
    return first + space + rest


def placeholders(pattern: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(pattern) if name]
