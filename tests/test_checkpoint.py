"""Checkpoints and the journal survive kills and damage: the newest intact state is found."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from edge_zo.checkpoint import Journal, load_latest, save
from edge_zo.errors import UserError


def arrays_for(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {"W": rng.standard_normal((64, 32)).astype(np.float32), "step": np.array(step)}


def test_round_trip_is_bit_exact_and_keeps_two(tmp_path):
    for step in (10, 20, 30):
        save(tmp_path, step, arrays_for(step), {"step": step, "note": "x"})
    ckpt = load_latest(tmp_path)
    assert ckpt.step == 30 and ckpt.meta == {"step": 30, "note": "x"}
    for name, value in arrays_for(30).items():
        assert ckpt.arrays[name].dtype == value.dtype
        assert np.array_equal(ckpt.arrays[name], value)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.npz")) == \
        ["ckpt-000000020.npz", "ckpt-000000030.npz"]


@pytest.mark.parametrize("damage", ["unmarked", "corrupted", "truncated"])
def test_a_damaged_newest_checkpoint_falls_back(tmp_path, damage):
    save(tmp_path, 1, arrays_for(1), {})
    newest = save(tmp_path, 2, arrays_for(2), {})
    if damage == "unmarked":  # killed between the rename and the marker
        newest.with_suffix(".done").unlink()
    elif damage == "corrupted":
        data = bytearray(newest.read_bytes())
        data[len(data) // 2] ^= 0xFF
        newest.write_bytes(bytes(data))
    else:
        newest.write_bytes(newest.read_bytes()[:100])
    ckpt = load_latest(tmp_path)
    assert ckpt.step == 1 and np.array_equal(ckpt.arrays["W"], arrays_for(1)["W"])


def test_no_checkpoint_is_none(tmp_path):
    assert load_latest(tmp_path) is None


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from edge_zo.checkpoint import save
    step = 0
    while True:
        step += 1
        rng = np.random.default_rng(step)
        save(sys.argv[1], step, {"W": rng.standard_normal((512, 512)).astype(np.float32)},
             {"step": step})
        print(step, flush=True)
""")


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.05, 0.13, 0.29, 0.41])
def test_sigkill_at_any_moment_leaves_an_intact_checkpoint(tmp_path, delay):
    # A real process writing 1 MiB checkpoints in a loop, killed with SIGKILL mid-stream;
    # the delays land the kill at different points of the write/rename/mark sequence.
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "1"  # at least one checkpoint is complete
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ckpt = load_latest(tmp_path)
    expected = np.random.default_rng(ckpt.step).standard_normal((512, 512)).astype(np.float32)
    assert ckpt.meta == {"step": ckpt.step}
    assert np.array_equal(ckpt.arrays["W"], expected)


def test_journal_replays_after_a_step_and_drops_a_torn_tail(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    for step in range(5):
        journal.append({"step": step, "losses": [0.5 + step, 0.25]})
    journal.close()
    with open(journal.path, "a") as f:
        f.write('{"step": 5, "loss')  # the kill landed mid-line
    assert [r["step"] for r in journal.read(after_step=2)] == [3, 4]
    journal.truncate_after(3)
    journal.append({"step": 4, "losses": [9.0]})
    assert [r["step"] for r in journal.read()] == [0, 1, 2, 3, 4]
    assert journal.read()[-1]["losses"] == [9.0]
    assert json.loads(journal.path.read_text().splitlines()[-1])["step"] == 4


def test_damage_inside_the_journal_is_an_error(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_text('{"step": 0, "losses": [1.0]}\nGARBAGE\n{"step": 2, "losses": [1.0]}\n')
    with pytest.raises(UserError, match="line 2: damaged journal entry"):
        Journal(path).read()
