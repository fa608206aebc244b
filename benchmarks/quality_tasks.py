"""The tasks of the quality benchmark: where each one's rows come from, how they are split
per seed, and how each model reads them (bundle label words, template).

Splits (the MeZO family's protocol, ../shared/data/README.md): the test set of a task is
fixed (seed 0) and never used for a choice; each benchmark seed draws its own train and
dev sets from what is left. SST-2 and RTE: 1000 train / 500 dev sampled from the train
split, test = SST-2's test.tsv (1000 of it) or RTE's validation (277). BoolQ: the 32 FewGLUE
rows cannot train anything, so its 3270 validation rows are split: 1000 fixed test rows,
then 1000 train / 500 dev per seed from the other 2270 and the 32. CB and COPA have only 32
training rows: 24 train / 8 dev per seed, test = validation (56 and 100): their standard
errors are large and say so. `wiki` is the personalization job: a user's own text, here the
distinct Wikipedia paragraphs of BoolQ's validation rows (one domain, no labels): 200 fixed
test paragraphs, then 300 train / 100 dev per seed; its score is held-out NLL per token.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class Task:
    name: str
    labels: tuple[str, ...]  # the label values as the data writes them, in the bundle's label order
    encoder_prompt: str  # MiniLM's linear head reads the bare text: a prompt around it only blurs it
    lm_prompt: str  # SmolLM2: the MeZO family's prompt (edge_zo.templates), or the review prompt
    lm_words: tuple[str, ...]  # SmolLM2's label words, one token each, in label order
    separator: str = " "
    choices: tuple[str, ...] = ()  # multiple choice (COPA): the candidate fields
    max_seq_len: int = 256
    text: bool = False  # causal-LM text (personalization): no labels, NLL per token

    @property
    def causal(self) -> bool:
        return bool(self.choices) or self.text


TASKS = {
    "sst2": Task("sst2", ("0", "1"), "{sentence}", "Review: {sentence}\nSentiment:", (" negative", " positive"),
                 max_seq_len=128),
    "rte": Task("rte", ("entailment", "not_entailment"), "{premise} {hypothesis}",
                '{premise}\nDoes this mean that "{hypothesis}" is true? Yes or No?\n', ("Yes", "No"), separator=""),
    "boolq": Task("boolq", ("true", "false"), "{question}? {passage}", "{passage} {question}?\n", ("Yes", "No"),
                  separator=""),
    "cb": Task("cb", ("entailment", "contradiction", "neutral"), "{premise} {hypothesis}",
               'Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\n', ("Yes", "No", "Maybe"),
               separator=""),
    "copa": Task("copa", (), "", "", (), choices=("choice1", "choice2"), max_seq_len=64),
    "wiki": Task("wiki", (), "", "", (), text=True),
}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _sst2(path: Path, header: bool) -> list[dict]:
    lines = path.read_text().splitlines()
    if header:  # train.tsv, dev.tsv: "sentence<TAB>label"
        return [{"sentence": s, "label": lab} for s, lab in (line.rsplit("\t", 1) for line in lines[1:])]
    return [{"sentence": s, "label": lab} for lab, s in (line.split(" ", 1) for line in lines)]  # test.tsv


def split(task: str, seed: int, n_test: int = 1000) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, dev, test) rows of `task` for a benchmark seed; test does not depend on the seed."""
    folder = DATA / ("boolq" if task == "wiki" else task)
    if task == "wiki":
        return _paragraphs(folder / "val.jsonl", seed)
    if task == "sst2":
        pool, test = _sst2(folder / "train.tsv", True), _sst2(folder / "test.tsv", False)
    elif task == "rte":
        pool, test = _jsonl(folder / "train.jsonl"), _jsonl(folder / "val.jsonl")
    elif task == "boolq":
        val = _jsonl(folder / "val.jsonl")
        order = random.Random(0).sample(range(len(val)), len(val))
        test = [val[i] for i in order[:n_test]]
        pool = [val[i] for i in order[n_test:]] + _jsonl(folder / "train.jsonl")
        n_test = len(test)
    else:  # cb, copa: 32 FewGLUE training rows
        pool, test = _jsonl(folder / "train.jsonl"), _jsonl(folder / "val.jsonl")
    test = random.Random(0).sample(test, min(len(test), n_test))
    n_train, n_dev = (1000, 500) if len(pool) > 100 else (24, 8)
    sample = random.Random(seed).sample(pool, min(len(pool), n_train + n_dev))
    return sample[:n_train], sample[n_train:n_train + n_dev], test


def _paragraphs(path: Path, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    texts = sorted({row["passage"] for row in _jsonl(path)})
    order = random.Random(0).sample(texts, len(texts))
    test, pool = order[:200], order[200:]
    sample = random.Random(seed).sample(pool, 400)
    return ([{"text": t} for t in sample[:300]], [{"text": t} for t in sample[300:]],
            [{"text": t} for t in test])


def write_split(task: str, seed: int, folder: Path, n_test: int) -> dict[str, Path]:
    """train/dev/test JSONL files of one seed under `folder` (test shared by all seeds)."""
    train, dev, test = split(task, seed, n_test)
    paths = {"train": folder / f"seed{seed}" / "train.jsonl", "dev": folder / f"seed{seed}" / "dev.jsonl",
             "test": folder / f"test-{n_test}.jsonl"}
    for name, rows in (("train", train), ("dev", dev), ("test", test)):
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(row) + "\n" for row in rows)
        if not paths[name].is_file() or paths[name].read_text() != text:
            paths[name].write_text(text)
    return paths


def template_keys(task: Task, encoder: bool) -> dict:
    """RunConfig keys that make the task's template for a model (a user template, so one
    bundle per label set serves every task with that many labels)."""
    if task.text:
        return {"text_field": "text"}
    if task.choices:
        return {"template": "copa"}
    return {"template_prompt": task.encoder_prompt if encoder else task.lm_prompt,
            "template_labels": task.labels, "template_separator": " " if encoder else task.separator}
