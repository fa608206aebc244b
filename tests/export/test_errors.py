"""Bad input: a clear one-line error (exit 2), the fix in the message, and no bundle left behind."""

from __future__ import annotations

import pytest
from conftest import LABELS
from transformers import GPTNeoXConfig

from edge_zo.cli import main
from edge_zo.errors import UserError
from edge_zo_export import pipeline

pytestmark = pytest.mark.export


def export(capsys, *argv) -> tuple[int, str]:
    code = main(["export", *map(str, argv)])
    return code, capsys.readouterr().err


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_folder_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    code, err = export(capsys, tmp_path, "--task", "causal-lm", "--out", tmp_path / "b")
    assert code == 2 and "not a Hugging Face model folder (no config.json)" in err
    assert "minilm, smollm2-135m" in err and "Traceback" not in err
    assert leftovers(tmp_path) == ["notes.txt"]


def test_comma_joined_label_words_are_refused_with_the_fix(tmp_path, capsys):
    code, err = export(capsys, "minilm", "--task", "classification", "--label-words", "negative,positive",
                       "--out", tmp_path / "b")
    assert code == 2 and "--label-words negative positive" in err and not (tmp_path / "b").exists()


def test_a_missing_model_names_the_built_ins(tmp_path, capsys):
    code, err = export(capsys, tmp_path / "nope", "--task", "causal-lm", "--out", tmp_path / "b")
    assert code == 2 and "no such folder" in err and "minilm, smollm2-135m" in err


def test_unsupported_architecture_lists_the_supported(tmp_path, capsys):
    GPTNeoXConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                  num_attention_heads=4).save_pretrained(tmp_path / "neox")
    code, err = export(capsys, tmp_path / "neox", "--task", "causal-lm", "--out", tmp_path / "b")
    assert code == 2 and "'gpt_neox' is not supported" in err
    assert "supported: bert, gpt2, llama, opt" in err
    assert not (tmp_path / "b").exists()


def test_targets_that_match_nothing_list_candidates(tiny_folder, tmp_path, capsys):
    code, err = export(capsys, tiny_folder("llama"), "--task", "causal-lm", "--out", tmp_path / "b",
                       "--targets", "*attention.query*")
    assert code == 2 and "matched no matrix" in err
    assert "model.layers.*.self_attn.q_proj.weight" in err and "model.layers.*.mlp.down_proj.weight" in err
    assert leftovers(tmp_path) == []


def test_rank_larger_than_a_matrix(tiny_folder, tmp_path, capsys):
    code, err = export(capsys, tiny_folder("bert"), "--task", "classification", *LABELS,
                       "--out", tmp_path / "b", "--targets", "classifier", "--rank", "3")
    assert code == 2 and "--rank 3 exceeds min(m, n) = 2 of classifier.weight (2 x 32)" in err
    assert leftovers(tmp_path) == []


def test_existing_output_needs_force(tiny_folder, tmp_path, capsys):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = export(capsys, tiny_folder("llama"), "--task", "causal-lm", "--out", out)
    assert code == 2 and "already exists" in err and "--force" in err
    assert leftovers(out) == ["keep.txt"]


def test_multi_token_label_word_suggests_causal_lm(tiny_folder, tmp_path, capsys):
    code, err = export(capsys, tiny_folder("gpt2"), "--task", "classification", "--out",
                       tmp_path / "b", "--label-words", " great movie", " terrible")
    assert code == 2 and "' great movie' is 2 tokens" in err and "--task causal-lm" in err


def test_causal_lm_needs_a_language_model_head(tiny_folder, tmp_path, capsys):
    code, err = export(capsys, tiny_folder("bert"), "--task", "causal-lm", "--out", tmp_path / "b")
    assert code == 2 and "no language-model head" in err


def test_a_failure_mid_export_leaves_no_partial_bundle(tiny_folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("the old bundle")

    def broken_export(core, task, lifted, path, *args):
        path.write_bytes(b"half a graph")
        raise UserError("the exporter failed halfway")
    # Whichever graph the pipeline writes first fails (the export is cut short, fast).
    monkeypatch.setattr(pipeline, "export_graph", broken_export)
    if hasattr(pipeline, "write_inference"):
        monkeypatch.setattr(pipeline, "write_inference", broken_export)
    code, err = export(capsys, tiny_folder("llama"), "--task", "causal-lm", "--out", out, "--force")
    assert code == 2 and "failed halfway" in err
    assert leftovers(tmp_path) == ["b"]  # no hidden staging folder either
    assert leftovers(out) == ["keep.txt"]  # --force replaces only with a complete bundle


def test_force_replaces_only_once_the_new_bundle_is_complete(tmp_path):
    old, new = tmp_path / "out", tmp_path / ".out.partial"
    old.mkdir()
    (old / "stale").write_text("x")
    new.mkdir()
    (new / "manifest.json").write_text("{}")
    pipeline._move_into_place(new, old)
    assert leftovers(tmp_path) == ["out"] and leftovers(old) == ["manifest.json"]
