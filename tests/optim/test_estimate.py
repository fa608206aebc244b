"""The shared estimator pieces (edge_zo/optim/estimate.py) beyond what the conformance matrix drives."""

import tracemalloc

import numpy as np
import pytest

from edge_zo.optim.estimate import probe_plan, sketch_probes
from edge_zo.rng import Key


@pytest.mark.parametrize("estimator", ["central", "forward"])
def test_sketch_probes_make_each_D_when_it_is_read(estimator):
    """A step holds its N directions B_i and C, not its 2N probe D's besides: a probe's
    D = C + s·μ·B_i is computed matrix by matrix when the runtime reads it, bit for bit."""
    rng, mu, N = np.random.default_rng(0), 1e-3, 4
    C = {"wide": rng.standard_normal((8, 60000), dtype=np.float32),
         "small": rng.standard_normal((8, 300), dtype=np.float32)}
    B = [{n: rng.standard_normal(c.shape, dtype=np.float32) for n, c in C.items()} for _ in range(N)]
    tracemalloc.start()
    probes = sketch_probes(7, C, B, mu, estimator, Key.root(0), {})
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(probes) == len(probe_plan(estimator, N))
    assert peak < C["wide"].nbytes / 20  # made all the probes, materialised no D
    for probe, (i, sign) in zip(probes, probe_plan(estimator, N)):
        assert probe.sketch_id == 7 and set(probe.D) == set(C) and len(probe.D) == 2
        for n in C:
            expected = C[n] if sign == 0 else C[n] + np.float32(sign * mu) * B[i][n]
            np.testing.assert_array_equal(probe.D[n], expected)
