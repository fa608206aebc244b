"""benchmarks/cosine.py: each method's iterate moves, and the ZO-MOPI rows use the presets' k (a few seconds)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

COSINE = Path(__file__).resolve().parents[1] / "benchmarks" / "cosine.py"
spec = importlib.util.spec_from_file_location("cosine_benchmark", COSINE)
cosine = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cosine)


def test_zo_mopi_rows_use_the_presets_k_and_beta():
    specs = cosine.method_specs(None, 0.9, r=64, n=128)
    (paper,) = [n for n in specs if "paper-code" in n]
    (default,) = [n for n in specs if "(zo-mopi)" in n]
    assert specs[paper] == ("sign", 32, 0.0)
    assert specs[default] == ("sign", 32, 0.9)
    # --k still sets both, clamped to r
    assert cosine.method_specs(4, 0.9, r=16, n=32)[paper.replace("32", "4")][1] == 4
    assert {s[1] for s in cosine.method_specs(None, 0.9, r=16, n=32).values() if s[0] == "sign"} == {16}


def test_the_iterate_moves_and_the_raw_gradient_descends(tmp_path):
    out = tmp_path / "cos.json"
    result = cosine.main(["--m", "16", "--n", "8", "--r", "4", "--steps", "40", "--seeds", "2", "--tune-seeds", "1",
                          "--etas", "0.003", "0.01", "0.03", "--out", str(out)])
    assert out.exists()
    raw = [r for r in result["rows"] if r["method"] == "raw subspace gradient A·G" and r["spectrum"] == "flat"]
    first, last = raw[0], raw[-1]
    assert last["steps"] == 40 and math.isfinite(last["loss_ratio"])
    # F(X_t) falls from F(X_0) towards the floor (the part outside the sketch)
    assert result["floor"]["flat"] < last["loss_ratio"] < first["loss_ratio"] <= 1.05
    assert last["loss_ratio"] < 0.97
    # every row got a finite loss at the η the grid chose
    assert all(math.isfinite(r["loss_ratio"]) for r in result["rows"])
