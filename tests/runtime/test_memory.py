"""No host copy of W beside the bound buffer: RSS of a ~300 MB-weights bundle, in a child."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from . import fixtures

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20

CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np, psutil
    def peak_rss():  # VmHWM: ru_maxrss would carry the parent's peak across fork + exec
        line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
        return int(line.split()[1]) * 1024
    from edge_zo.runtime import Runtime
    proc = psutil.Process()
    base = proc.memory_info().rss
    rt = Runtime(sys.argv[1], probe_slots=2)
    loaded = proc.memory_info().rss
    ids = np.full((2, 8), 3, np.int64)
    rt.set_batch(ids, np.ones_like(ids), labels=np.array([0, 1]))
    rng = np.random.default_rng(0)
    A = {n: rng.standard_normal((m, 4), dtype=np.float32) for n, (m, _) in rt.shapes.items()}
    rt.set_sketch(0, A)
    from edge_zo.probes import LowRankProbe
    def Probe():
        return LowRankProbe(0, {n: rng.standard_normal((4, k), dtype=np.float32) * 1e-3 for n, (_, k) in rt.shapes.items()})
    rt.losses([Probe() for _ in range(4)])
    probed = proc.memory_info().rss
    peak_probe = peak_rss()
    rt.fold(Probe().D)
    folded = proc.memory_info().rss
    peak = peak_rss()
    print(json.dumps(dict(base=base, loaded=loaded, probed=probed, peak_probe=peak_probe,
                          folded=folded, peak=peak)))
""")


@pytest.mark.slow
def test_w_is_held_once_on_a_300_mb_model(tmp_path):
    tiny = fixtures.build(tmp_path, hidden=4096, ffn=9216, out_dim=4096, external=True)
    weights = sum(w.nbytes for w in tiny.weights.values())
    del tiny
    assert weights > 280 * MiB
    result = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rss = json.loads(result.stdout)
    grown = {k: (v - rss["base"]) / MiB for k, v in rss.items()}
    print(grown, weights / MiB)
    assert grown["loaded"] > 0.95 * weights / MiB  # the buffer is resident: the measure sees W
    # one copy of W plus small change; a second host copy would add another 300 MB
    assert grown["peak_probe"] < weights / MiB + 64
    assert grown["peak"] < weights / MiB + 64  # fold goes through a 4 MiB scratch
