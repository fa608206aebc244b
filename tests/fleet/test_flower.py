"""The fleet on Flower's simulation engine (Ray), through `edge-zo fleet` in real processes:
4 devices on non-IID shards end bit-identical; the fleet killed with kill -9 mid-run and
started again goes on from the server's journal, and a 5th device that joins then catches
up by replaying it, bit-identical to the others."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from edge_zo.checkpoint import load_latest

from .conftest import rows, write_rows

pytest.importorskip("flwr.simulation")
pytest.importorskip("ray")
pytestmark = pytest.mark.slow

ENV = {**os.environ, "TQDM_DISABLE": "1", "RAY_DEDUP_LOGS": "0"}


def fleet_cmd(bundle, data, out, clients: int, steps: int) -> list[str]:
    return [sys.executable, "-m", "edge_zo.cli", "fleet", "--bundle", str(bundle), "--data", str(data),
            "--clients", str(clients), "--out", str(out), "--steps", str(steps), "--batch-size", "8",
            "--seed", "5", "eta=1e-2", "mu=1e-2"]


def final_arrays(folder) -> dict:
    ckpt = load_latest(folder / "checkpoints")
    return ckpt.step, ckpt.arrays


def server_journal(out) -> list[dict]:
    return [json.loads(line) for line in (out / "server" / "journal.jsonl").read_text().splitlines()]


def test_fleet_on_flower_survives_kill_and_late_device(tmp_path, bundles, shards):
    data = tmp_path / "shard-{partition-id}.jsonl"
    for i, shard in enumerate(shards):
        (tmp_path / f"shard-{i}.jsonl").write_text(shard.read_text())
    write_rows(tmp_path / "shard-4.jsonl", rows(0.5, 24, 4))
    out, steps = tmp_path / "out", 40
    proc = subprocess.Popen(fleet_cmd(bundles["fullrank"], data, out, 4, steps), env=ENV, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    journal = out / "server" / "journal.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.is_file() and len(journal.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read()
    os.killpg(proc.pid, signal.SIGKILL)  # the server, Ray and every simulated device at once
    proc.wait()
    done_before = len(server_journal(out))
    assert 3 <= done_before < steps

    result = subprocess.run(fleet_cmd(bundles["fullrank"], data, out, 5, steps), env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["steps"] == steps and len(summary["clients"]) == 5
    assert 0 < summary["up_bytes_per_round"] < 1000 and summary["weights_bytes"] > 0
    entries = server_journal(out)
    assert [e["step"] for e in entries] == list(range(steps))
    assert entries[0]["clients"] == 4 and entries[-1]["clients"] == 5  # the 5th joined after the restart
    step, reference = final_arrays(out / "client-0")
    assert step == steps
    for k in range(1, 5):
        k_step, arrays = final_arrays(out / f"client-{k}")
        assert k_step == steps and arrays.keys() == reference.keys()
        for name in reference:
            assert np.array_equal(arrays[name], reference[name]), (k, name)
