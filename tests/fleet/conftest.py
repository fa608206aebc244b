"""Fixtures of the fleet tests: tiny bundles and four non-IID shards of review rows."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from edge_zo.fleet import wire
from edge_zo.fleet.client import ClientSettings, FleetClient
from edge_zo.fleet.local import LocalTransport
from edge_zo.fleet.server import FleetServer
from runtime.fixtures import build

POSITIVE_SHARE = (0.1, 0.3, 0.7, 0.9)  # each client's labels lean its own way (non-IID)
FLEETS = {  # optimizer settings per graph: zo-mopi redraws its sketch (a fold) every 2 steps
    "mezo": ("fullrank", wire.Fleet(seed=3, preset="mezo", optimizer={"eta": "1e-2", "mu": "1e-2"}, steps=5)),
    "zo-mopi": ("lowrank", wire.Fleet(seed=3, preset="zo-mopi", optimizer={"eta": "1e-2", "nu": "2", "k": "2"},
                                      steps=5)),
}
# every other optimizer, in the fleet-of-one test only (one losses call a step, like these two)
OTHERS = {
    "zo-muon": ("lowrank", wire.Fleet(seed=3, preset="zo-muon", optimizer={"eta": "1e-2", "nu": "2"},
                                      steps=5)),
    "lozo": ("lowrank", wire.Fleet(seed=3, preset="lozo", optimizer={"eta": "1e-2", "nu": "2"}, steps=5)),
    "loren": ("fullrank", wire.Fleet(seed=3, preset="loren", optimizer={"eta": "1e-2"}, steps=5)),
}


def rows(share: float, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        good = rng.random() < share
        out.append({"text": f"the movie was {'good' if good else 'bad'} {rng.choice(['it', 'plot', 'a', 'very'])}",
                    "label": "positive" if good else "negative"})
    return out


def write_rows(path: Path, data: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return path


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("shards")
    return [write_rows(root / f"shard-{i}.jsonl", rows(share, 24, i)) for i, share in enumerate(POSITIVE_SHARE)]


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    for graph in ("fullrank", "lowrank"):
        build(root / graph, graph=graph, max_seq_len=16)
    return {graph: root / graph for graph in ("fullrank", "lowrank")}


def settings(bundle: Path, data: Path, folder: Path) -> ClientSettings:
    return ClientSettings(bundle=str(bundle), data=str(data), folder=str(folder), batch_size=8, checkpoint_every=2,
                          threads=1)


def fleet_of(root: Path, bundle: Path, shards: list[Path], fleet: wire.Fleet, say=lambda m: None):
    """A server and a transport to one client per shard (node ids 1..n)."""
    clients = {i + 1: FleetClient(settings(bundle, data, root / f"client-{i + 1}")) for i, data in enumerate(shards)}
    return FleetServer(root / "server", fleet, say=say), LocalTransport(clients)


def replica(client: FleetClient) -> dict[str, np.ndarray]:
    """Everything a replica is: the runtime's weights and the optimizer's state."""
    out = {f"W/{k}": v for k, v in client.runtime.export_weights().items()}
    out.update({f"opt/{k}": v for k, v in client.state.to_arrays().items()})
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
