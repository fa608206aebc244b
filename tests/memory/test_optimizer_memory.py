"""The plan counts each optimizer's state: LOREN's full-size momentum dwarfs ZO-MOPI's."""

from __future__ import annotations

from edge_zo.bundle import Manifest, TrainedMatrix
from edge_zo.memory.model import MiB, optimizer_mib
from edge_zo.runconfig import RunConfig


def manifest(rank: int = 8) -> Manifest:
    mats = [TrainedMatrix(f"layer{i}.weight", (384, 1536), inputs={"W": "w", "A": "a", "D": "d"})
            for i in range(4)]
    return Manifest(task="causal-lm", graph="lowrank", rank=rank, probe_slots=1, max_seq_len=64,
                    matrices=mats, source={}, exporter={})


def state_mib(preset: str) -> float:
    m = manifest()
    return optimizer_mib(m, RunConfig(bundle="b", data="d", preset=preset).optimizer_config(m.rank))


def test_loren_counts_a_vector_per_block_plus_full_momentum():
    m, n, blocks = 384, 1536, 4
    # memory_bytes: 4 bytes x (one n-vector per block + an m x n momentum per matrix),
    # plus the one D buffer (r x n per matrix) a step's probes bind on a low-rank graph.
    assert state_mib("loren") == (4 * blocks * (n + m * n) + 4 * blocks * 8 * n) / MiB


def test_low_rank_state_is_a_small_fraction_of_the_weights():
    weights_mib = 4 * 384 * 1536 * 4 / MiB
    assert 0 < state_mib("zo-mopi") < 0.25 * weights_mib < state_mib("loren")
