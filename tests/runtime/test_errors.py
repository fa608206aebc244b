"""Bad bundles and bad batches: a UserError naming the file or input, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_zo.bundle import BundleError
from edge_zo.errors import UserError
from edge_zo.runtime import Runtime

from . import fixtures

REPO = Path(__file__).resolve().parents[2]


def _edit_manifest(path: Path, edit) -> None:
    raw = json.loads((path / "manifest.json").read_text())
    edit(raw)
    (path / "manifest.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("edit, named", [
    (lambda raw: raw["matrices"][0].update(shape=[16, 13]), "layers.0.fc1.weight"),
    (lambda raw: raw["matrices"][1]["inputs"].update(A="layers.0.fc2.weight::lora_A"), "layers.0.fc2.weight::lora_A"),
    (lambda raw: raw.update(rank=3), "layers.0.fc1.weight::A"),
    (lambda raw: raw.update(task="causal-lm", label_words=[], label_token_ids=[]), "loss_mask"),
])
def test_a_manifest_that_does_not_match_its_graph(tmp_path, edit, named):
    tiny = fixtures.build(tmp_path)
    _edit_manifest(tmp_path, edit)
    with pytest.raises(BundleError) as err:
        Runtime(tiny.path)
    assert named in str(err.value) and "model.onnx" in str(err.value)


def test_a_missing_model_file(tmp_path):
    fixtures.build(tmp_path)
    (tmp_path / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx: missing"):
        Runtime(tmp_path)


@pytest.mark.parametrize("external", [False, True])
def test_a_truncated_model_file(tmp_path, external):
    fixtures.build(tmp_path, external=external)
    model = tmp_path / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(BundleError, match="model.onnx"):
        Runtime(tmp_path)


def test_missing_or_truncated_external_weights(tmp_path):
    fixtures.build(tmp_path, external=True)
    data = tmp_path / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(BundleError, match=r"model.onnx.data: truncated"):
        Runtime(tmp_path)
    data.unlink()
    with pytest.raises(BundleError, match=r"model.onnx.data: missing"):
        Runtime(tmp_path)


@pytest.mark.parametrize("change, named", [
    (lambda b: b.update(input_ids=np.zeros((3, 17), np.int64), attention_mask=np.ones((3, 17), np.int64)),
     "input_ids"),
    (lambda b: b.update(input_ids=b["input_ids"].astype(np.float32)), "input_ids"),
    (lambda b: b.update(attention_mask=b["attention_mask"][:, :-1]), "attention_mask"),
    (lambda b: b.update(labels=np.array([0, 1, 2])), "labels"),
    (lambda b: b.update(labels=np.array([0, 1])), "labels"),
    (lambda b: b.pop("labels"), "labels"),
])
def test_a_batch_that_does_not_fit_the_graph(tiny_cls, change, named):
    rt = Runtime(tiny_cls.path)
    batch = tiny_cls.batch()
    change(batch)
    with pytest.raises(UserError, match=named):
        rt.set_batch(**batch)


def test_a_causal_lm_batch_needs_its_loss_mask(tiny_lm):
    rt = Runtime(tiny_lm.path)
    batch = tiny_lm.batch()
    batch["loss_mask"] = batch["loss_mask"][:2]
    with pytest.raises(UserError, match="loss_mask"):
        rt.set_batch(**batch)


def test_the_error_reaches_a_user_as_one_line_without_traceback(tmp_path):
    fixtures.build(tmp_path)
    model = tmp_path / "model.onnx"
    model.write_bytes(model.read_bytes()[:200])
    code = ("import sys\nfrom edge_zo.errors import UserError\nfrom edge_zo.runtime import Runtime\n"
            f"try:\n    Runtime({str(tmp_path)!r})\nexcept UserError as err:\n"
            "    print(f'error: {err}', file=sys.stderr); sys.exit(err.exit_code)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and str(model) in result.stderr
