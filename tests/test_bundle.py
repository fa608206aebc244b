"""The manifest schema: round-trips, and every malformed manifest is refused with the reason."""

from __future__ import annotations

import json

import pytest

from edge_zo.bundle import (FORMAT_VERSION, BundleError, Manifest, TrainedMatrix,
                            read_manifest, write_manifest)


def make_manifest(**changes) -> Manifest:
    fields = dict(
        task="classification", graph="lowrank", rank=4, probe_slots=2, max_seq_len=32,
        matrices=[TrainedMatrix("h.0.attn.c_attn.weight", (96, 32), layout="in_out",
                                inputs={"W": "w0", "A": "w0::A", "D": "w0::D"})],
        source={"model": "tiny", "architecture": "GPT2LMHeadModel", "sha256": "0" * 64},
        exporter={"torch": "2.13.0"}, label_words=[" bad", " good"], label_token_ids=[7, 9],
    )
    fields.update(changes)
    return Manifest(**fields)


def write_bundle(tmp_path, manifest: Manifest):
    write_manifest(tmp_path, manifest)
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "tokenizer.json").write_text("{}")
    return tmp_path


def test_round_trip(tmp_path):
    manifest = make_manifest()
    loaded = read_manifest(write_bundle(tmp_path, manifest))
    assert loaded == manifest
    assert loaded.matrices[0].stored_shape == (32, 96)  # Conv1D stores in x out
    assert json.loads((tmp_path / "manifest.json").read_text())["format_version"] == FORMAT_VERSION


@pytest.mark.parametrize("changes, message", [
    (dict(task="regression"), "task 'regression'"),
    (dict(rank=0), "needs rank >= 1"),
    (dict(rank=40), "rank 40 exceeds min(m, n) = 32"),
    (dict(graph="fullrank", rank=0, probe_slots=2), "probe_slots 2 is invalid"),
    (dict(label_words=["only"], label_token_ids=[]), "at least two label_words"),
    (dict(label_token_ids=[1]), "differ in length"),
    (dict(matrices=[]), "no trained matrices"),
])
def test_invalid_values_are_refused(changes, message):
    with pytest.raises(BundleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_manifest(**changes).validate()


def test_matrix_inputs_must_match_the_graph_kind():
    mat = TrainedMatrix("w", (8, 8), inputs={"W": "w"})
    with pytest.raises(BundleError, match=r"inputs \['W'\] must be \['A', 'D', 'W'\]"):
        make_manifest(matrices=[mat]).validate()
    make_manifest(graph="fullrank", rank=0, probe_slots=1, matrices=[mat]).validate()


@pytest.mark.parametrize("edit, message", [
    (lambda raw: raw.update(format_version=99), "format_version 99 is not supported"),
    (lambda raw: raw.update(colour="red"), "unknown keys ['colour']"),
    (lambda raw: raw.pop("task"), "missing keys ['task']"),
    (lambda raw: raw["matrices"][0].update(shape=[1, 2, 3]), "shape must have two dimensions"),
])
def test_malformed_manifest_file(tmp_path, edit, message):
    write_bundle(tmp_path, make_manifest())
    raw = json.loads((tmp_path / "manifest.json").read_text())
    edit(raw)
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError) as err:
        read_manifest(tmp_path)
    assert message in str(err.value) and "manifest.json" in str(err.value)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(BundleError, match="not a folder"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(BundleError, match="manifest.json: missing"):
        read_manifest(tmp_path)
    write_bundle(tmp_path, make_manifest())
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json: missing from the bundle"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(tmp_path)
