"""Fixtures for the runtime tests: tiny bundles (tests/runtime/fixtures.py) and probes."""

from __future__ import annotations

import numpy as np
import pytest

from edge_zo.probes import LowRankProbe  # noqa: F401  (the tests import the probe types from here)
from edge_zo.probes import NoiseProbe as FullRankProbe  # noqa: F401

from . import fixtures


@pytest.fixture(scope="module")
def tiny_cls(tmp_path_factory):
    return fixtures.build(tmp_path_factory.mktemp("cls"))


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return fixtures.build(tmp_path_factory.mktemp("lm"), task="causal-lm", external=True)


def random_sketch(shapes: dict, rank: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal((m, rank)).astype(np.float32) for n, (m, _) in shapes.items()}


def random_probes(shapes: dict, rank: int, count: int, seed: int, sketch_id: int = 0, scale: float = 0.1):
    rng = np.random.default_rng(seed)
    return [LowRankProbe(sketch_id, {n: (scale * rng.standard_normal((rank, k))).astype(np.float32)
                                     for n, (_, k) in shapes.items()}) for _ in range(count)]
