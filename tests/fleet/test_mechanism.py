"""The fleet without Flower: replicas bit-identical, a fleet of one is a finetune run,
late and crashed clients catch up by replay, the server goes on from its journal."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from edge_zo.checkpoint import load_latest
from edge_zo.fleet.client import FleetClient
from edge_zo.fleet.server import FleetServer
from edge_zo.loop import train
from edge_zo.runtime import Runtime
from edge_zo.stopping import StopFlag

from runtime.fixtures import build

from .conftest import FLEETS, OTHERS, assert_same, fleet_of, replica, settings


@pytest.fixture(params=sorted(FLEETS))
def method(request):
    return request.param


def journal(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "journal.jsonl").read_text().splitlines()]


def test_replicas_stay_bit_identical(tmp_path, bundles, shards, method):
    graph, fleet = FLEETS[method]
    server, transport = fleet_of(tmp_path, bundles[graph], shards, fleet)
    summary = server.run(transport)
    assert summary["steps"] == fleet.steps and summary["clients"] == [1, 2, 3, 4]
    entries = journal(tmp_path / "server")
    assert [e["step"] for e in entries] == list(range(fleet.steps))
    assert all(e["clients"] == 4 and e["examples"] == 32 for e in entries)
    first = replica(transport.clients[1])
    for node in (2, 3, 4):
        assert_same(first, replica(transport.clients[node]))
    # the weights moved from the bundle's
    start = Runtime(bundles[graph]).export_weights()
    assert all(not np.array_equal(start[n], first[f"W/{n}"]) for n in start)
    step0 = [json.loads(line)["losses"] for line in (tmp_path / "client-1" / "journal.jsonl").read_text().splitlines()]
    assert step0[0] == entries[0]["losses"]
    # every client ends with a checkpoint at the last step, like a finished finetune run
    for node in (1, 2, 3, 4):
        assert load_latest(tmp_path / f"client-{node}" / "checkpoints").step == fleet.steps


@pytest.mark.parametrize("method", [*FLEETS, *OTHERS])
def test_fleet_of_one_is_a_finetune_run(tmp_path, bundles, shards, method):
    """The probe/apply split changes nothing: one client's fleet == finetune, bit for bit."""
    graph, fleet = {**FLEETS, **OTHERS}[method]
    server, transport = fleet_of(tmp_path, bundles[graph], shards[:1], fleet)
    server.run(transport)
    config = settings(bundles[graph], shards[0], tmp_path / "run").run_config(fleet)
    train(config, tmp_path / "run", False, None, StopFlag(), {})
    fleet_ckpt = load_latest(tmp_path / "client-1" / "checkpoints")
    run_ckpt = load_latest(tmp_path / "run" / "checkpoints")
    assert fleet_ckpt.step == run_ckpt.step == fleet.steps
    assert_same(fleet_ckpt.arrays, run_ckpt.arrays)
    assert journal(tmp_path / "server") and [e["losses"] for e in journal(tmp_path / "server")] == \
        [e["losses"] for e in journal(tmp_path / "run")]


def test_late_and_crashed_clients_catch_up_bit_identical(tmp_path, bundles, shards, method):
    graph, fleet = FLEETS[method]
    server, transport = fleet_of(tmp_path, bundles[graph], shards, fleet)
    transport.away.add(4)  # joins after two steps
    for t in range(2):
        server.record(t, server.round(transport, t))
    transport.away.clear()
    transport.silent.add(2)  # killed mid-round: its losses never arrive
    server.record(2, server.round(transport, 2))
    transport.silent.clear()
    # node 2's process is gone: a new one opens the same folder (checkpoint + journal replay)
    transport.clients[2] = FleetClient(transport.clients[2].settings)
    server.run(transport)
    entries = journal(tmp_path / "server")
    assert [e["clients"] for e in entries] == [3, 3, 3, 4, 4]  # 4 late, 2 dropped from step 2
    first = replica(transport.clients[1])
    for node in (2, 3, 4):
        assert_same(first, replica(transport.clients[node]))


def test_server_goes_on_from_its_journal(tmp_path, bundles, shards, method):
    """A server killed after 3 steps (a torn journal line) and started again ends where one
    that never stopped does; so does a client that was away the whole time (pure replay)."""
    graph, fleet = FLEETS[method]

    def first_steps(root):  # node 4 away for the first 3 steps
        server, transport = fleet_of(root, bundles[graph], shards, fleet)
        transport.away.add(4)
        for t in range(3):
            server.record(t, server.round(transport, t))
        transport.away.clear()
        return server, transport

    server, transport = first_steps(tmp_path / "a")
    server.run(transport)
    reference = replica(transport.clients[1])

    server, transport = first_steps(tmp_path / "b")
    with open(tmp_path / "b" / "server" / "journal.jsonl", "a") as f:
        f.write('{"step":3,"losses":[0.6')  # killed mid-append
    server = FleetServer(tmp_path / "b" / "server", fleet, say=lambda m: None)
    assert server.step == 3
    transport.clients = {n: FleetClient(c.settings) for n, c in transport.clients.items()}  # all restarted
    server.run(transport)
    assert [e["clients"] for e in journal(tmp_path / "b" / "server")] == [3, 3, 3, 4, 4]
    for node in (1, 2, 3, 4):
        assert_same(reference, replica(transport.clients[node]))


def test_a_device_with_another_bundle_is_left_out(tmp_path, bundles, shards):
    graph, fleet = FLEETS["mezo"]
    other = tmp_path / "other-bundle"
    build(other, graph=graph, max_seq_len=16, seed=1)  # same architecture, other weights
    said = []
    server, transport = fleet_of(tmp_path, bundles[graph], shards[:2], fleet, say=said.append)
    transport.clients[3] = FleetClient(settings(other, shards[2], tmp_path / "client-3"))
    server.run(transport)
    assert sorted(server.known) == [1, 2]
    assert sum("node 3 left out: its bundle is not the fleet's" in m for m in said) == 1  # said once
    assert all(e["clients"] == 2 for e in journal(tmp_path / "server"))


def test_a_device_over_its_memory_budget_sits_out(tmp_path, bundles, shards):
    graph, fleet = FLEETS["mezo"]
    said = []
    server, transport = fleet_of(tmp_path, bundles[graph], shards[:3], fleet, say=said.append)
    transport.clients[3] = FleetClient(dataclasses.replace(transport.clients[3].settings, memory_budget=1))
    server.run(transport)
    assert all(e["clients"] == 2 for e in journal(tmp_path / "server"))
    assert any("node 3 left out: memory budget 1 MiB reached on this device" in m for m in said)
    assert_same(replica(transport.clients[1]), replica(transport.clients[2]))


def test_a_round_nobody_answered_is_run_again_without_harm(tmp_path, bundles, shards, method):
    """Step 2 is a redraw (a fold before the probes) for zo-mopi: probing it twice on one
    runtime must not fold twice."""
    graph, fleet = FLEETS[method]
    server, transport = fleet_of(tmp_path / "a", bundles[graph], shards, fleet)
    server.run(transport)
    reference = replica(transport.clients[1])
    server, transport = fleet_of(tmp_path / "b", bundles[graph], shards, fleet)
    for t in range(2):
        server.record(t, server.round(transport, t))
    transport.silent.update(transport.clients)
    assert server.round(transport, 2) == {}  # every answer lost: step 2 is not recorded
    transport.silent.clear()
    server.run(transport)
    for node in (1, 2, 3, 4):
        assert_same(reference, replica(transport.clients[node]))
