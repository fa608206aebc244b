"""The counter-based generator: stable bits, order independence, distinct streams."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from edge_zo import rng
from edge_zo.rng import BLOCK, Key, fill_block, noise_stream, normal, orthonormal, tensor_noise

# Pinned values: if numpy's Philox/normal stream or our key derivation ever changes,
# every saved run stops being reproducible; this test says so first.
GOLDEN = Key.root(1234).child("step", 7, "probe", 2)


def test_golden_values_are_stable():
    got = normal(GOLDEN, (3,)).tobytes().hex()
    assert got == EXPECTED_HEX


def test_same_bits_in_a_fresh_process_with_another_hash_seed():
    code = "from edge_zo.rng import *; print(normal(Key.root(1234).child('step', 7, 'probe', 2), (3,)).tobytes().hex())"
    env = {**os.environ, "PYTHONHASHSEED": "987"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == normal(GOLDEN, (3,)).tobytes().hex()


def test_tensor_noise_golden_values_are_stable():
    # Issue 8 changed this stream on purpose (SFC64 blocks of BLOCK elements, seeded from
    # blake2b(key, name, block)); a change of numpy's ziggurat or of the layout shows here.
    z = tensor_noise(GOLDEN, "W", (2 * BLOCK + 3,))
    got = np.concatenate([z[:3], z[BLOCK - 1:BLOCK + 1], z[-1:]]).tobytes().hex()
    assert got == TENSOR_NOISE_HEX


def test_tensor_noise_is_the_same_bits_in_a_fresh_process_with_one_thread():
    code = ("from edge_zo.rng import *; import sys; "
            "sys.stdout.write(tensor_noise(Key.root(1234), 'W', (3, BLOCK)).tobytes().hex())")
    env = {**os.environ, "PYTHONHASHSEED": "987", "EDGE_ZO_NOISE_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout == tensor_noise(Key.root(1234), "W", (3, BLOCK)).tobytes().hex()


@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_tensor_noise_does_not_depend_on_the_thread_count(monkeypatch, threads):
    want = tensor_noise(Key.root(2), "W", (5, BLOCK + 11))
    monkeypatch.setenv("EDGE_ZO_NOISE_THREADS", threads)
    assert rng.threads() == int(threads)
    assert tensor_noise(Key.root(2), "W", (5, BLOCK + 11)).tobytes() == want.tobytes()


def test_a_block_is_a_function_of_key_name_and_index_only():
    # so the runtime can draw and apply z block by block, and a dense tensor drawn flat
    # (m·n,) is the same z as (m, n)
    key, shape = Key.root(4), (3, BLOCK // 2 + 5)
    z = tensor_noise(key, "W", shape).reshape(-1)
    assert z.tobytes() == tensor_noise(key, "W", (z.size,)).tobytes()
    block = fill_block(noise_stream(key, "W"), 1, np.empty(BLOCK, np.float32))
    assert block[:z.size - BLOCK].tobytes() == z[BLOCK:].tobytes()  # the last block is cut short
    assert z[:BLOCK].tobytes() == tensor_noise(key, "W", (BLOCK + 1,))[:BLOCK].tobytes()  # prefix: size-free
    assert z[:BLOCK].tobytes() != block.tobytes()


def test_tensor_noise_is_float32_standard_normal():
    x = tensor_noise(Key.root(5), "W", (200_000,))
    assert x.dtype == np.float32
    # 5σ bounds as in test_normal_is_float32_standard_normal; the tail beyond 3.65 (numpy's
    # ziggurat switches method there) has mass 2.6e-4: 52 ± 7 expected draws
    assert abs(x.mean()) < 0.011 and abs(x.var() - 1) < 0.016
    assert 17 < np.count_nonzero(np.abs(x) > 3.6541528853610088) < 87


def test_draws_do_not_depend_on_order():
    keys = [Key.root(0).child("probe", i) for i in range(5)]
    forward = [tensor_noise(k, "W", (4, 3)) for k in keys]
    backward = [tensor_noise(k, "W", (4, 3)) for k in reversed(keys)][::-1]
    for a, b in zip(forward, backward):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize(
    "a,b",
    [(("ab", "c"), ("a", "bc")), ((1,), ("1",)), ((0, "z", "W"), (0, "z", "b")), ((0, 1), (1, 0))],
)
def test_distinct_paths_give_distinct_streams(a, b):
    assert normal(Key(a), (4,)).tobytes() != normal(Key(b), (4,)).tobytes()


def test_normal_is_float32_standard_normal():
    x = normal(Key.root(5), (200_000,))
    assert x.dtype == np.float32
    # mean has sd 1/√n = 0.0022 and the variance sd √(2/n) = 0.0032: 5σ bounds
    assert abs(x.mean()) < 0.011 and abs(x.var() - 1) < 0.016


def test_orthonormal_sketch_is_orthonormal_and_sign_fixed():
    A = orthonormal(Key.root(3), 50, 8)
    assert A.dtype == np.float32 and A.shape == (50, 8)
    assert np.allclose(A.T @ A, np.eye(8), atol=1e-6)
    # sign fix: R = Aᵀ X has a non-negative diagonal for the Gaussian X it came from
    X = normal(Key.root(3), (50, 8))
    assert np.all(np.diagonal(A.T @ X) > 0)


def test_key_round_trips_through_json_form():
    k = Key.root(3).child("step", 4, "W")
    assert Key(tuple(k.to_list())) == k
    with pytest.raises(TypeError):
        Key.root(1).child(1.5)


EXPECTED_HEX = "ccc5afbf8830a43e6732803f"  # numpy 2.x Philox + standard_normal(float32)
TENSOR_NOISE_HEX = "abb41e3f89050dbfcabcdb3ecf39c5bf011b79be94b5b63e"  # numpy 2.x SFC64 blocks + standard_normal(float32)
