"""The template a run gets when it names none, and integer labels (issue 20).

An encoder or classifier bundle (no label_token_ids: MiniLM's linear head) reads the bare
text (review-plain); a bundle that scores a language model's label words keeps the review
prompt; a new run names the default it used in config.json. Integer labels 0..N-1 read
as the bundle's labels in order, said once; one out of range stops with one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_zo import runconfig
from edge_zo.bundle import read_manifest
from edge_zo.cli import build_parser
from edge_zo.data import DataError, load_classification
from edge_zo.templates import TEMPLATES, default_template_name, fit_template, registry_help
from faults.helpers import assert_clean, edge_zo, notes
from runtime.fixtures import build

ROWS = [("good film", "1"), ("bad film", "0")] * 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A label-words bundle (the fixture's: label_token_ids recorded), an encoder-like copy
    of it (none recorded, head linear), and integer-labelled data."""
    root = tmp_path_factory.mktemp("default-template")
    build(root / "words", max_seq_len=16)
    shutil.copytree(root / "words", root / "encoder")
    manifest = json.loads((root / "encoder" / "manifest.json").read_text())
    manifest.update(label_token_ids=[], source={**manifest["source"], "head": "linear"})
    (root / "encoder" / "manifest.json").write_text(json.dumps(manifest))
    write(root / "train.jsonl", ROWS)
    return root


def write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": int(y) if y.lstrip("-").isdigit() else y}) + "\n"
                            for t, y in rows))
    return path


def test_the_default_follows_the_bundle(tiny):
    assert default_template_name(read_manifest(tiny / "words")) == "review"
    assert default_template_name(read_manifest(tiny / "encoder")) == "review-plain"
    assert fit_template(None, read_manifest(tiny / "encoder"), "") is TEMPLATES["review-plain"]
    causal = build(tiny / "causal", task="causal-lm", max_seq_len=16)
    assert default_template_name(causal.manifest) is None


def test_help_lists_every_built_in_template():
    commands = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices).choices
    for command in ("finetune", "eval"):
        (action,) = [a for a in commands[command]._actions if "--template" in a.option_strings]
        assert registry_help() in action.help
    assert all(name in registry_help() for name in TEMPLATES)


@pytest.mark.parametrize("name", ["review", "review-plain"])
def test_integer_labels_read_as_the_bundles_labels_in_order(tmp_path, name):
    path = write(tmp_path / "d.jsonl", [("good", "1"), ("bad", "0"), ("fine", "positive")])
    dataset = load_classification(path, TEMPLATES[name])
    assert [e.label for e in dataset.examples] == [1, 0, 1]
    assert dataset.integer_labels == 2
    assert dataset.examples[0].prompt == ("good" if name == "review-plain" else "Review: good\nSentiment:")


@pytest.mark.parametrize("label", ["2", "-1"])
def test_an_integer_label_out_of_range_is_refused_with_its_line(tmp_path, label):
    path = write(tmp_path / "d.jsonl", [("good", "1"), ("bad", label)])
    with pytest.raises(DataError) as err:
        load_classification(path, TEMPLATES["review-plain"])
    message = str(err.value)
    assert f"{path}, line 2: label {int(label)} is out of range" in message and "0..1" in message
    assert "\n" not in message


def test_named_templates_keep_their_own_label_values(tmp_path):
    """rte's labels are words: an integer there is a bad row, not a guess at its order."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"premise": "a", "hypothesis": "b", "label": 0}) + "\n")
    with pytest.raises(DataError, match="label '0' is not one of"):
        load_classification(path, TEMPLATES["rte"])


def test_a_run_from_before_recorded_defaults_keeps_review(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"bundle": "b", "data": "d", "template": ""}))
    assert runconfig.load(tmp_path).template == "review"


@pytest.mark.slow
def test_finetune_on_an_encoder_bundle_reads_bare_text_and_integer_labels(tiny, tmp_path):
    run = tmp_path / "run"
    result = edge_zo("finetune", "--bundle", tiny / "encoder", "--data", tiny / "train.jsonl",
                     "--eval-data", tiny / "train.jsonl", "--out", run, "steps=2", "batch_size=4", "eval_every=0")
    assert_clean(result, 0)
    said = notes(result, "labels 0..1 read as the bundle's labels [bad, good]")
    assert len(said) == 1, result.stderr  # two files, one line
    assert json.loads((run / "config.json").read_text())["template"] == "review-plain"
    scored = edge_zo("eval", "--run", run, "--data", tiny / "train.jsonl")
    assert_clean(scored, 0)
    assert json.loads(scored.stdout)["examples"] == len(ROWS)


@pytest.mark.slow
def test_an_out_of_range_integer_label_stops_finetune_in_one_line(tiny, tmp_path):
    data = write(tmp_path / "bad.jsonl", [*ROWS, ("odd film", "2")])
    result = edge_zo("finetune", "--bundle", tiny / "words", "--data", data, "--out", tmp_path / "run", "steps=1")
    assert_clean(result, 2, f"{data}, line {len(ROWS) + 1}: label 2 is out of range", "0..1")
