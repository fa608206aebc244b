"""benchmarks/fleet_accuracy.py runs at --tiny size and writes its comparison (the lead runs
it at full size on SST-2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fleet_accuracy_tiny(tmp_path):
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fleet_accuracy.py"), "--tiny", "--steps", "3",
                           "--work", str(tmp_path / "work"), "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    forwards = result["forwards"]
    assert forwards["fleet"] == forwards["pooled"] == forwards["alone"] == 4 * 3 * 2  # matched: K*S*(2N)
    assert all(0 <= a <= 1 for a in [result["fleet"], result["pooled"], *result["alone"]])
    assert len(result["alone"]) == 4
