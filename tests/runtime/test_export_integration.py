"""The runtime on bundles written by the real exporter (tiny models from tests/export/tiny.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from .conftest import random_probes, random_sketch

TINY = Path(__file__).resolve().parents[1] / "export" / "tiny_models.py"  # the exporter's tiny models


@pytest.mark.export
@pytest.mark.slow
@pytest.mark.parametrize("arch, task", [("bert", "classification"), ("llama", "causal-lm")])
def test_runtime_runs_an_exported_bundle(tmp_path, arch, task):
    pytest.importorskip("torch")
    from edge_zo.runtime import Runtime
    from edge_zo_export.pipeline import ExportOptions, export_bundle
    spec = importlib.util.spec_from_file_location("export_tiny", TINY)
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)

    source = tiny.build(arch, tmp_path / "model")
    opts = ExportOptions(model=str(source), task=task, out=tmp_path / "bundle", max_seq_len=16, rank=2,
                         label_words=["great", "terrible"] if task == "classification" else [])
    export_bundle(opts)
    rt = Runtime(tmp_path / "bundle")
    ids = np.full((2, 8), 5, np.int64)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    batch.update(labels=np.array([0, 1])) if task == "classification" else batch.update(
        loss_mask=np.ones(ids.shape, np.float32))
    rt.set_batch(**batch)
    base = rt.scores()
    A = random_sketch(rt.shapes, rt.manifest.rank, seed=0)
    rt.set_sketch(0, A)
    probes = random_probes(rt.shapes, rt.manifest.rank, count=3, seed=1, scale=0.5)
    losses = rt.losses(probes)
    assert np.isfinite(losses).all() and len(set(losses.tolist())) == 3
    # fold(C) then D = 0 gives what D = C gave before the fold
    rt.fold(probes[0].D)
    assert rt.losses([type(probes[0])(0, None)])[0] == pytest.approx(losses[0], rel=1e-4)
    assert not np.allclose(rt.scores(), base)
