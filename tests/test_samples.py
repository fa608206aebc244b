"""The embedded review sample (edge_zo/samples/): well-formed, balanced, duplicate-free, and as
large as its README says. Torch-free and fast: the quickstart depends on these files."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[1] / "edge_zo" / "samples"
LABELS = {"negative", "positive"}
COUNTS = {"reviews-train.jsonl": 160, "reviews-test.jsonl": 80}  # as the README states


def _rows(name: str) -> list[dict]:
    lines = (SAMPLES / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _key(text: str) -> str:
    """Duplicates ignore case, punctuation and spacing: 'Great!' and 'great' are the same row."""
    return re.sub(r"\W+", " ", text.lower()).strip()


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_rows_parse_with_text_and_label(name):
    rows = _rows(name)
    assert len(rows) == COUNTS[name]
    for row in rows:
        assert set(row) == {"text", "label"}, row
        assert isinstance(row["text"], str) and row["label"] in LABELS, row
        assert 5 <= len(row["text"].split()) <= 30, row["text"]


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_labels_balanced_within_ten_percent(name):
    counts = Counter(row["label"] for row in _rows(name))
    assert set(counts) == LABELS
    assert abs(counts["positive"] - counts["negative"]) <= 0.1 * sum(counts.values()), counts


def test_no_duplicates_within_or_across_files():
    seen: dict[str, str] = {}
    for name in sorted(COUNTS):
        for row in _rows(name):
            key = _key(row["text"])
            assert key not in seen, f"{row['text']!r} in {name} repeats a row of {seen.get(key)}"
            seen[key] = name


def test_readme_states_the_counts_and_licence():
    readme = (SAMPLES / "README.md").read_text(encoding="utf-8")
    for name, count in COUNTS.items():
        assert re.search(rf"`{re.escape(name)}`\s*\|\s*{count}\b", readme), name
    assert "Apache-2.0" in readme


def test_files_load_with_the_review_template():
    """The runtime's own reader accepts them with the template the README recommends."""
    from edge_zo.data import load_classification
    from edge_zo.templates import TEMPLATES

    template = TEMPLATES["review"]
    assert template.prompt == "Review: {text}\nSentiment:"
    assert template.label_words == [" negative", " positive"]
    for name, count in COUNTS.items():
        assert len(load_classification(SAMPLES / name, template).examples) == count
